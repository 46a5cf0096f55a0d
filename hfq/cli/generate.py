"""`hfq generate` and `hfq chat`: run a model, streaming its tokens to the terminal.

MODEL is an hfq or transformers folder, a Hub id, the embedded name, or a .gguf file (run by llama-cpp-python).
The text goes to stdout; the tokens/s line and the chat prompt go to stderr, so a pipe gets only the text."""

from __future__ import annotations

import sys
import threading
import time


def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="continue a prompt, streaming the tokens (greedy unless --temperature)")
    g.add_argument("model", help="hfq/transformers folder, Hub id, embedded model name, or a .gguf file")
    g.add_argument("--prompt", help="the text to continue (default: read all of stdin)")
    _sampling(g)
    g.set_defaults(handler=_cmd_generate)
    c = sub.add_parser("chat", help="multi-turn chat with the tokenizer's chat template (one line per turn)")
    c.add_argument("model", help="hfq/transformers folder, Hub id, embedded model name, or a .gguf file")
    c.add_argument("--system", help="a system message before the first turn")
    _sampling(c)
    c.set_defaults(handler=_cmd_chat)


def _sampling(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy; above 0 samples")
    p.add_argument("--top-k", type=int, default=50, help="sampling: keep the k most likely tokens (default 50)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--ctx", type=int, default=2048, help=".gguf files: llama.cpp's context size (default 2048)")


def _check(args) -> None:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} must be at least 1.")
    if args.temperature < 0:
        raise ValueError(f"--temperature {args.temperature} must be 0 (greedy) or more.")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p {args.top_p} must be in (0, 1].")
    if args.top_k < 0:
        raise ValueError(f"--top-k {args.top_k} must be 0 (off) or more.")


def _runner(args):
    _check(args)
    if args.model.endswith(".gguf"):
        return GGUFGenerator(args.model, n_ctx=args.ctx, seed=args.seed)
    return HFGenerator(args.model)


def _settings(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "seed": args.seed}


def _emit(gen, pieces) -> tuple[int, float]:
    """Write the pieces as they come; (tokens generated, seconds)."""
    t0 = time.perf_counter()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return gen.generated, time.perf_counter() - t0


def _rate(n: int, seconds: float) -> None:
    print(f"[{n} tokens, {n / seconds if seconds > 0 else 0.0:.1f} tokens/s]", file=sys.stderr)


def _cmd_generate(args) -> int:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt:
        raise ValueError("the prompt is empty; pass --prompt TEXT or pipe the text into stdin.")
    gen = _runner(args)
    _rate(*_emit(gen, gen.stream(prompt, **_settings(args))))
    return 0


def _cmd_chat(args) -> int:
    gen = _runner(args)
    gen.check_chat()
    messages = [{"role": "system", "content": args.system}] if args.system else []
    tty = sys.stdin.isatty()
    while True:
        if tty:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = []
        n, seconds = _emit(gen, _keep(gen.stream_chat(messages, **_settings(args)), reply))
        messages.append({"role": "assistant", "content": "".join(reply)})
        _rate(n, seconds)


def _keep(pieces, into: list):
    for p in pieces:
        into.append(p)
        yield p


class HFGenerator:
    """A folder, Hub id or embedded name through transformers' generate, streamed by TextIteratorStreamer."""

    def __init__(self, model: str):
        from transformers import AutoTokenizer

        from ..embedded import resolve
        from ..evaluation import load

        src = resolve(model)
        self.tok = AutoTokenizer.from_pretrained(src)
        self.model = load(src)
        self.generated = 0

    def check_chat(self) -> None:
        if not getattr(self.tok, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template (tokenizer_config.json / "
                             "chat_template.jinja); use `hfq generate` for plain text continuation.")

    def stream(self, prompt: str, **settings):
        return self._stream(self.tok(prompt, return_tensors="pt"), settings)

    def stream_chat(self, messages: list[dict], **settings):
        enc = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
        return self._stream(enc, settings)

    def _stream(self, enc, settings):
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = generate_kwargs(self.tok, **settings)
        result = {}

        def run():
            try:
                torch.manual_seed(settings["seed"])
                with torch.no_grad():
                    result["out"] = self.model.generate(**enc, **kwargs, streamer=streamer)
            except BaseException as e:   # re-raised in the caller's thread, after the streamer is closed
                result["error"] = e
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if "error" in result:
            raise result["error"]
        self.generated = result["out"].shape[1] - enc["input_ids"].shape[1]


def generate_kwargs(tokenizer, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                    seed: int) -> dict:
    """transformers' generate() arguments for the CLI's settings (greedy at temperature 0)."""
    kw = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id
          if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    if temperature == 0:
        return {**kw, "do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    return {**kw, "do_sample": True, "temperature": temperature, "top_k": top_k or None, "top_p": top_p}


class GGUFGenerator:
    """A .gguf file through llama-cpp-python (llama.cpp's sampler; its chat template from the file)."""

    def __init__(self, path: str, n_ctx: int, seed: int):
        from ..evaluation import _no_extra_buffers
        from ..gguf.export import check_gguf

        check_gguf(path)
        try:
            import llama_cpp
        except ImportError as e:
            raise RuntimeError("running a .gguf file needs llama-cpp-python: pip install llama-cpp-python") from e
        with _no_extra_buffers(llama_cpp):
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, seed=seed, verbose=False)
        self.path = path
        self.generated = 0

    def check_chat(self) -> None:
        if not self.llm.metadata.get("tokenizer.chat_template"):
            raise ValueError(f"{self.path} has no tokenizer.chat_template; use `hfq generate` for plain text "
                             "continuation.")

    def stream(self, prompt: str, **settings):
        chunks = self.llm.create_completion(prompt, stream=True, **_llama_settings(settings))
        return self._count(c["choices"][0]["text"] for c in chunks)

    def stream_chat(self, messages: list[dict], **settings):
        chunks = self.llm.create_chat_completion(messages, stream=True, **_llama_settings(settings))
        return self._count(c["choices"][0]["delta"].get("content") or "" for c in chunks)

    def _count(self, pieces):
        self.generated = 0
        for p in pieces:   # llama-cpp-python streams one chunk per token (a split character's bytes held back)
            if p:
                self.generated += 1
                yield p


def _llama_settings(s: dict) -> dict:
    return {"max_tokens": s["max_new_tokens"], "temperature": s["temperature"], "top_k": s["top_k"],
            "top_p": s["top_p"], "seed": s["seed"]}
