"""Build a tiny Qwen2-architecture chat model, offline and byte-for-byte reproducibly.

Why: the integration tests need a real vLLM serving a real chat model, but the Hugging Face Hub
is unreachable here and real models are too slow on 2 CPU cores. This builder trains a small
byte-level BPE tokenizer and (unless ``--untrained``) a ~0.57M-parameter Qwen2 on ChatML
conversations whose answers are compact JSON shaped like the gateway's IR schemas, so greedy
decoding under a JSON grammar closes its braces and stops with ``<|im_end|>``.

Run it with the vLLM environment (torch, transformers, tokenizers, safetensors)::

    PYTHONPATH=. .venv-vllm/bin/python -m gateway.dev.models.tiny [--out DIR] [--untrained]

The last stdout line is the model directory. Without ``--out`` it is
``~/.cache/ir-gateway/models/<name>-<hash>`` (``$IR_GATEWAY_CACHE`` or ``$XDG_CACHE_HOME``
move it), where the hash covers this file's source and the build parameters: editing the
builder rebuilds, an unchanged builder reuses the cache. Rebuilds are byte-identical
(seeded, deterministic single-thread training, sorted JSON, no timestamps).
Importing this module is stdlib-only, so the gateway's environment can call `default_path`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.dev.models.chatml import (
    CHAT_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    SPECIAL_TOKENS,
    TOOL_TOKENS,
    render_prompt,
)
from gateway.dev.models.corpus import Conversation, conversations

NAME = "tiny-qwen2"
SEED = 1234
# An upper bound: the generated corpus saturates at ~1.3k merges, which keeps the embedding
# (most of the parameters) small.
VOCAB_SIZE = 2048
MAX_TRAIN_TOKENS = 512
# head_dim = hidden / heads = 64: vLLM's CPU attention only has kernels for 32/64/80/96/...;
# head_dim 16 crashes the engine at the first request.
MODEL_PARAMS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
TRAIN_PARAMS: dict[str, Any] = {
    "steps": 200,
    "batch_size": 16,
    "lr": 3e-3,
    "warmup": 30,
    "conversations": 4000,
    # One thread: results cannot depend on the core count (CPU reductions split by thread),
    # and on a busy 2-core machine OpenMP barriers made 2 threads 3-8x slower than 1.
    "threads": 1,
}

# --------------------------------------------------------------------------- build


_SOURCES = tuple(Path(__file__).with_name(n) for n in ("tiny.py", "chatml.py", "corpus.py"))


def cache_key(*, trained: bool = True) -> str:
    """Hash of this builder's sources and parameters (constants live in the sources)."""
    h = hashlib.sha256()
    for source in _SOURCES:
        h.update(source.read_bytes())
    h.update(json.dumps({"name": NAME, "trained": trained}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def default_path(*, trained: bool = True) -> Path:
    root = os.environ.get("IR_GATEWAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ir-gateway")
    name = NAME if trained else f"{NAME}-untrained"
    return Path(root) / "models" / f"{name}-{cache_key(trained=trained)}"


def _log(msg: str) -> None:
    print(f"[tiny] {msg}", file=sys.stderr, flush=True)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _train_tokenizer(texts: list[str]) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        # Every byte must be encodable, or a grammar could demand a character with no token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TOOL_TOKENS])
    return tok


def _tokenizer_config(tok: Any) -> dict[str, Any]:
    added = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                  "rstrip": False, "single_word": False,
                                  "special": t in SPECIAL_TOKENS}
        for t in SPECIAL_TOKENS + TOOL_TOKENS
    }
    return {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "bos_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": IM_END, "errors": "replace", "model_max_length": 4096,
        "pad_token": ENDOFTEXT, "split_special_tokens": False,
        # Loads tokenizer.json as is; Qwen2Tokenizer would rebuild its own pre-tokenizer.
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": None,
    }


def _length_bucketed_batches(examples: list[tuple[list[int], list[int]]], steps: int, bs: int,
                             rng: random.Random) -> list[list[tuple[list[int], list[int]]]]:
    """Batches of similar length: padding to the longest row is most of the compute otherwise."""
    batches: list[list[tuple[list[int], list[int]]]] = []
    while len(batches) < steps:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order) - bs * 8 + 1, bs * 8):
            group = sorted(order[start : start + bs * 8],
                           key=lambda i: len(examples[i][0]) + len(examples[i][1]))
            chunk = [[examples[i] for i in group[j : j + bs]] for j in range(0, len(group), bs)]
            rng.shuffle(chunk)
            batches.extend(chunk)
    return batches[:steps]


def _train_model(model: Any, tok: Any, convs: list[Conversation],
                 pad_id: int, eos_id: int) -> float:
    import torch

    examples = []
    for messages, tools, answer in convs:
        prompt = tok.encode(render_prompt(messages, tools)).ids
        target = [*tok.encode(answer).ids, eos_id]
        examples.append((prompt, target))
    steps, bs, warmup = TRAIN_PARAMS["steps"], TRAIN_PARAMS["batch_size"], TRAIN_PARAMS["warmup"]
    batches = _length_bucketed_batches(examples, steps, bs, random.Random(SEED + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_PARAMS["lr"], betas=(0.9, 0.98),
                            weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    loss_value = float("nan")
    for step, batch in enumerate(batches):
        width = min(MAX_TRAIN_TOKENS, max(len(p) + len(t) for p, t in batch))
        ids = torch.full((bs, width), pad_id, dtype=torch.long)
        labels = torch.full((bs, width), -100, dtype=torch.long)
        for row, (prompt, target) in enumerate(batch):
            seq = (prompt + target)[:width]
            ids[row, : len(seq)] = torch.tensor(seq)
            # Loss only on the answer: the model must learn to write (and end) JSON, not prompts.
            labels[row, len(prompt) : len(seq)] = torch.tensor(seq[len(prompt) :])
        # Right padding under a causal mask never affects real tokens, so no attention mask.
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = loss.item()
        if step % 50 == 0 or step == steps - 1:
            _log(f"step {step:4d} loss {loss_value:.4f}")
    model.eval()
    return loss_value


def build(out_dir: Path, *, trained: bool = True) -> Path:
    """Build the model into ``out_dir`` (replaced if it holds an earlier build) and return it.

    Sets torch's global seed, thread count and deterministic mode: meant for its own process.
    """
    import importlib.metadata as md

    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    started = time.monotonic()
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "build-info.json").exists():
        raise SystemExit(f"{out_dir} is not empty and holds no earlier build; refusing to replace")
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(TRAIN_PARAMS["threads"])

    convs = conversations(TRAIN_PARAMS["conversations"], SEED)
    tok = _train_tokenizer([render_prompt(m, t) + a + IM_END + "\n" for m, t, a in convs])
    pad_id, eos_id = tok.token_to_id(ENDOFTEXT), tok.token_to_id(IM_END)
    _log(f"tokenizer: {tok.get_vocab_size()} tokens ({time.monotonic() - started:.1f}s)")

    config = Qwen2Config(
        vocab_size=tok.get_vocab_size(), **MODEL_PARAMS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id,
        architectures=["Qwen2ForCausalLM"], dtype="float32",
    )
    model = Qwen2ForCausalLM(config).float()
    final_loss = _train_model(model, tok, convs, pad_id, eos_id) if trained else None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tok.save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", _tokenizer_config(tok))
        _write_json(tmp / "special_tokens_map.json",
                    {"eos_token": IM_END, "pad_token": ENDOFTEXT})
        cfg = config.to_dict()
        cfg.pop("_name_or_path", None)
        _write_json(tmp / "config.json", cfg)
        # vLLM would otherwise read sampling defaults from it (unless --generation-config vllm).
        _write_json(tmp / "generation_config.json",
                    {"eos_token_id": [eos_id, pad_id], "pad_token_id": pad_id})
        # Tied: lm_head shares the embedding storage, which safetensors refuses to save twice.
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
                 if k != "lm_head.weight"}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # mkdtemp/safetensors create owner-only modes; the model is shared with vLLM and CI.
        os.chmod(tmp, 0o755)
        os.chmod(tmp / "model.safetensors", 0o644)

        # The hand-written prompt renderer used for training must match the jinja template
        # that vLLM applies, or the model learns a prompt it never sees.
        hf_tok = AutoTokenizer.from_pretrained(str(tmp))
        samples = [next(c for c in convs if c[1] is None and c[0][0]["role"] == "system"),
                   next(c for c in convs if c[1] is None and c[0][0]["role"] == "user"),
                   next(c for c in convs if c[1] is not None)]
        for messages, tools, _ in samples:
            rendered = hf_tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=True)
            if rendered != render_prompt(messages, tools):
                raise RuntimeError(f"chat template mismatch:\n{rendered!r}\n"
                                   f"{render_prompt(messages, tools)!r}")

        versions = {d: md.version(d) for d in ("torch", "transformers", "tokenizers",
                                               "safetensors")}
        _write_json(tmp / "build-info.json", {
            "name": NAME, "trained": trained, "key": cache_key(trained=trained),
            "final_loss": None if final_loss is None else round(final_loss, 4),
            "versions": versions, "model": MODEL_PARAMS, "train": TRAIN_PARAMS if trained else None,
        })
        if _holds_build(out_dir, trained):
            # A concurrent build (another test process) finished first; its files are
            # identical and may already be in use by a running vLLM, so keep them.
            _log(f"{out_dir} appeared meanwhile; keeping it")
            return out_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"built {out_dir} in {time.monotonic() - started:.1f}s")
    return out_dir


def _holds_build(path: Path, trained: bool) -> bool:
    try:
        info = json.loads((path / "build-info.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(info.get("key") == cache_key(trained=trained))


def ensure(out_dir: Path | None = None, *, trained: bool = True, force: bool = False) -> Path:
    """Return a built model, reusing ``out_dir`` (default: the cache) when it holds this build."""
    out = Path(out_dir).expanduser().resolve() if out_dir else default_path(trained=trained)
    if not force and _holds_build(out, trained):
        _log(f"reusing {out}")
        return out
    if force and out.exists():
        shutil.rmtree(out)
    return build(out, trained=trained)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="model directory (default: the cache path)")
    parser.add_argument("--untrained", action="store_true", help="random weights, no training")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    # Accepted for callers that spell it out; the path is always the last stdout line.
    parser.add_argument("--print-path", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    path = ensure(args.out, trained=not args.untrained, force=args.force)
    print(path, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
