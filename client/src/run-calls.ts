/**
 * Runs a batch of calls read as JSON from stdin and prints one JSON line per call, in input order.
 *
 *   node dist/run-calls.js DEPLOYMENT [--tag TAG] [--concurrency N] [--ready-timeout SECONDS] [--pace SECONDS] < calls.json
 *
 * `--pace` makes each caller wait that long between its calls (a steady trickle of calls over time).
 *
 * stdin: `[{"function": "add", "args": [1, 2], "kwargs": {}, "timeout": 5, "logs": false}, ...]`.
 * stdout: per call `{"index": 0, "ok": true, "value": 3, "worker_id": "...", "revision_id": "...", "seconds": 0.01}`
 * (with `"logs": [["stdout", "text"], ...]`, the function's output, when the call asked for it)
 * or `{"index": 1, "ok": false, "error": {"name": "RemoteError", "type": "ValueError", "message": "...", ...}}`;
 * then `{"workers": [{"worker_id": "...", "calls": 4}, ...]}`, the router's view of the ready workers.
 * Connection and usage errors go to stderr with exit status 1 (2 for usage).
 */

import { VastrpcClient } from './index';
import type { CallOptions, Endpoint } from './index';
import { describeError, optionsFromEnv } from './env';

interface CallSpec {
  function: string;
  args?: unknown[];
  kwargs?: Record<string, unknown>;
  timeout?: number;
  /** Collect what the function prints or logs during the call. */
  logs?: boolean;
}

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    process.stdin.on('data', (chunk: Buffer) => chunks.push(chunk));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

async function runOne(endpoint: Endpoint, spec: CallSpec, index: number): Promise<Record<string, unknown>> {
  const logs: [string, string][] = [];
  try {
    const options: CallOptions = spec.timeout === undefined ? {} : { timeout: spec.timeout };
    if (spec.logs) {
      options.onLog = (stream, text) => logs.push([stream, text]);
    }
    const info = await endpoint.callWithInfo(spec.function, spec.args ?? [], spec.kwargs ?? {}, options);
    return {
      index,
      ok: true,
      value: info.value,
      worker_id: info.workerId,
      revision_id: info.revisionId,
      seconds: info.seconds,
      ...(spec.logs ? { logs } : {}),
    };
  } catch (err) {
    return { index, ok: false, error: describeError(err) };
  }
}

async function main(argv: string[]): Promise<number> {
  const deployment = argv[0];
  let tag = 'default';
  let concurrency = 1;
  let readyTimeout: number | undefined;
  let paceMs = 0;
  for (let i = 1; i < argv.length; i += 2) {
    const value = argv[i + 1];
    if (argv[i] === '--tag' && value) tag = value;
    else if (argv[i] === '--concurrency' && Number(value) >= 1) concurrency = Number(value);
    else if (argv[i] === '--ready-timeout' && Number(value) > 0) readyTimeout = Number(value);
    else if (argv[i] === '--pace' && Number(value) >= 0) paceMs = Number(value) * 1000;
    else usage();
  }
  if (!deployment || deployment.startsWith('--')) {
    return usage();
  }
  const specs = JSON.parse(await readStdin()) as CallSpec[];
  if (!Array.isArray(specs)) {
    process.stderr.write('stdin must hold a JSON array of calls\n');
    return 2;
  }
  const options = optionsFromEnv(process.env);
  if (readyTimeout !== undefined) options.readyTimeout = readyTimeout;
  const client = new VastrpcClient(options);
  try {
    const endpoint = await client.endpoint(deployment, tag);
    const results: Record<string, unknown>[] = new Array(specs.length);
    let next = 0;
    // `concurrency` callers take the calls in order: at most that many are in flight at once.
    const callers = Array.from({ length: Math.min(concurrency, specs.length) }, async () => {
      while (next < specs.length) {
        const index = next++;
        results[index] = await runOne(endpoint, specs[index]!, index);
        if (paceMs > 0) await new Promise((resolve) => setTimeout(resolve, paceMs));
      }
    });
    await Promise.all(callers);
    for (const line of results) {
      process.stdout.write(`${JSON.stringify(line)}\n`);
    }
    const workers = endpoint.readyWorkers().map((w) => ({ worker_id: w.workerId, calls: w.calls }));
    process.stdout.write(`${JSON.stringify({ workers })}\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`${JSON.stringify(describeError(err))}\n`);
    return 1;
  } finally {
    client.close();
  }
}

function usage(): never {
  process.stderr.write(
    'usage: node dist/run-calls.js DEPLOYMENT [--tag TAG] [--concurrency N] [--ready-timeout SECONDS] ' +
      '[--pace SECONDS] < calls.json\n',
  );
  process.exit(2);
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
