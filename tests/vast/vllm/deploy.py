# Vast's "vLLM Text Generation" example (guides/serverless/deployments/examples/vllm), the import
# lines changed, and vLLM (a GPU and a model download; its pip_install line dropped) replaced by a
# stand-in engine of the same shape: AsyncLLMEngine.from_engine_args, an async generate() stream of
# outputs, warm-up in __aenter__, shutdown_background_loop() in __aexit__.
from vastrpc import Deployment
from vastrpc.query import RTX_4090, RTX_5090, gpu_name

app = Deployment(name="vllm")

MODEL = "Qwen/Qwen3-0.6B"


class SamplingParams:
    def __init__(self, max_tokens=16, temperature=1.0):
        self.max_tokens = max_tokens
        self.temperature = temperature


class AsyncEngineArgs:
    def __init__(self, model, max_model_len):
        self.model = model
        self.max_model_len = max_model_len


class _Completion:
    def __init__(self, text):
        self.text = text


class _Output:
    def __init__(self, text):
        self.outputs = [_Completion(text)]


class AsyncLLMEngine:
    """Stands in for vllm.AsyncLLMEngine: "generates" the prompt's words back, one token per step."""

    def __init__(self, args):
        self.args = args
        self.running = True
        self.requests = set()

    @classmethod
    def from_engine_args(cls, args):
        return cls(args)

    async def generate(self, prompt, params, request_id):
        import asyncio

        if request_id in self.requests:
            raise ValueError(f"request {request_id} already exists")
        self.requests.add(request_id)
        words = prompt.split()[: params.max_tokens]
        for i in range(1, len(words) + 1):
            await asyncio.sleep(0)
            yield _Output(" ".join(reversed(words[:i])))

    def shutdown_background_loop(self):
        self.running = False


@app.context()
class VLLMEngine:
    async def __aenter__(self):
        args = AsyncEngineArgs(model=MODEL, max_model_len=512)
        self.engine = AsyncLLMEngine.from_engine_args(args)

        # Warmup: run a dummy generation to ensure model is fully loaded
        async for _ in self.engine.generate("warmup", SamplingParams(max_tokens=1), request_id="warmup"):
            pass
        return self

    async def __aexit__(self, *exc):
        self.engine.shutdown_background_loop()


@app.remote(benchmark_dataset=[{"prompt": "Hello"}])
async def generate(prompt: str, max_tokens: int = 128) -> str:
    import uuid

    engine = app.get_context(VLLMEngine)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7)
    request_id = str(uuid.uuid4())
    result = None
    async for output in engine.engine.generate(prompt, params, request_id=request_id):
        result = output
    return result.outputs[0].text


image = app.image("vastai/vllm:v0.11.0-cuda-12.8-mvc-cuda-12.0", 32)
image.use_system_python()
image.require(gpu_name.in_([RTX_4090, RTX_5090]))
app.configure_autoscaling(min_load=100)
app.ensure_ready()
