# Vast's @context guide (guides/serverless/deployments/context), the import lines changed and the
# engines that need a GPU or the internet (vLLM, transformers) replaced by stand-ins of the same shape.
import asyncio
import time

from vastrpc import Deployment

app = Deployment(name="contexts")
app.image("python:3.11-slim", 16)


@app.context("Qwen/Qwen3-0.6B", max_len=512)
class LLMEngine:
    def __init__(self, model_name, max_len=1024):
        self.model_name = model_name
        self.max_len = max_len

    async def __aenter__(self):
        self.engine = f"engine({self.model_name}, max_model_len={self.max_len})"
        return self

    async def __aexit__(self, *exc):
        self.engine = None


@app.context()
class Tokenizer:
    async def __aenter__(self):
        self.started = time.time()
        await asyncio.sleep(1.0)  # stands in for AutoTokenizer.from_pretrained("gpt2")
        self.tokenizer = str.split
        self.ready = time.time()
        return self

    async def __aexit__(self, *exc):
        pass


@app.context()
class Model:
    async def __aenter__(self):
        self.started = time.time()
        await asyncio.sleep(1.0)  # stands in for AutoModelForCausalLM.from_pretrained("gpt2").cuda()
        self.model = lambda tokens: list(reversed(tokens))
        self.ready = time.time()
        return self

    async def __aexit__(self, *exc):
        pass


@app.remote(benchmark_dataset=[{"prompt": "Hello"}])
async def generate(prompt: str, max_tokens: int = 128) -> str:
    engine = app.get_context(LLMEngine)
    return f"{engine.engine}: {prompt}"


@app.remote(benchmark_dataset=[{"text": "Hello world"}])
async def reverse(text: str) -> str:
    tok = app.get_context(Tokenizer)
    model = app.get_context(Model)
    return " ".join(model.model(tok.tokenizer(text)))


@app.remote(benchmark_dataset=[{}])
async def entered() -> dict:
    tok, model = app.get_context(Tokenizer), app.get_context(Model)
    return {"tokenizer": [tok.started, tok.ready], "model": [model.started, model.ready]}


app.ensure_ready()
