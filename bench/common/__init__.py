"""What the bench scripts share: child processes (`procs`), the fake vLLM (`fake_vllm`) and
its payloads (`payloads`), gateway processes (`gateway`), the open/closed-loop load generator
(`load`), statistics (`stats`) and the machine facts a report starts with (`machine`)."""
