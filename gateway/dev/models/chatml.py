"""ChatML as Qwen2.5 speaks it: special tokens, the chat template and a prompt renderer.

Shared by the tiny model's tokenizer and its training data, so the model is trained on
exactly the prompts vLLM will render for it (the builder checks this against Jinja)."""

from __future__ import annotations

import json
from typing import Any

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# Added but not special, as in Qwen2.5: the hermes tool parser reads them from the text, so
# they must survive skip_special_tokens.
TOOL_TOKENS = ("<tool_call>", "</tool_call>")
TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2.5's ChatML template (tools included, so `tools=` requests render like production),
# with a neutral default system prompt.
CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    f"        {{{{- '{DEFAULT_SYSTEM}' }}}}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user'
    " query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    '\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name'
    " and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>'
    '<|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    f"        {{{{- '<|im_start|>system\\n{DEFAULT_SYSTEM}<|im_end|>\\n' }}}}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first)'
    ' or (message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>'"
    " + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


def render_prompt(messages: list[dict[str, str]],
                  tools: list[dict[str, Any]] | None = None) -> str:
    """CHAT_TEMPLATE with add_generation_prompt=True for plain user/system turns (checked
    against the jinja rendering at build time)."""
    first_system = messages[0]["role"] == "system"
    if tools:
        head = messages[0]["content"] if first_system else DEFAULT_SYSTEM
        # transformers' tojson = json.dumps with default separators, key order kept.
        listed = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
        parts = [f"{IM_START}system\n{head}{TOOLS_HEADER}{listed}{TOOLS_FOOTER}{IM_END}\n"]
    elif first_system:
        parts = [f"{IM_START}system\n{messages[0]['content']}{IM_END}\n"]
    else:
        parts = [f"{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n"]
    rest = messages[1:] if first_system else messages
    parts += [f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in rest]
    return "".join(parts) + f"{IM_START}assistant\n"


