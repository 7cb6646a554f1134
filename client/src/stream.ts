/**
 * Streams a deployed async generator's values and prints each as a JSON line the moment it arrives.
 *
 *   node dist/stream.js DEPLOYMENT FUNCTION ['[args JSON]'] ['{kwargs JSON}'] [--tag TAG] [--timeout SECONDS]
 *     [--take N] [--logs] [--then FUNCTION '[args JSON]']
 *
 * stdout: per value `{"value": ..., "received_at": SECONDS_SINCE_EPOCH}`; with `--logs`, the function's
 * output as `{"log": "stdout", "text": "..."}`; then `{"end": "done", "values": N}` when the generator
 * finished, or `{"end": "stopped", "values": N, "at": SECONDS}` when `--take N` left the loop early (which
 * cancels the generator on the worker). `--then` makes one plain call on the same, still open, connections
 * and prints `{"then": RESULT}`. Last comes `{"workers": [{"worker_id": "...", "calls": 1}, ...]}`, the
 * router's view of the ready workers. An error prints `{"error": {"name": ..., ...}, "values": N}`, exit 1.
 */

import { VastrpcClient } from './index';
import type { CallOptions } from './index';
import { describeError, optionsFromEnv } from './env';

const now = (): number => Date.now() / 1000;
const print = (line: Record<string, unknown>): void => {
  process.stdout.write(`${JSON.stringify(line)}\n`);
};

interface Args {
  deployment: string;
  fn: string;
  args: unknown[];
  kwargs: Record<string, unknown>;
  tag: string;
  take: number | null;
  then: [string, unknown[]] | null;
  logs: boolean;
  timeout: number | undefined;
}

function parse(argv: string[]): Args {
  const positional: string[] = [];
  const parsed: Omit<Args, 'deployment' | 'fn' | 'args' | 'kwargs'> = {
    tag: 'default',
    take: null,
    then: null,
    logs: false,
    timeout: undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const value = argv[i + 1];
    if (flag === '--logs') {
      parsed.logs = true;
    } else if (flag === '--tag' && value) {
      parsed.tag = value;
      i++;
    } else if (flag === '--take' && Number(value) >= 0) {
      parsed.take = Number(value);
      i++;
    } else if (flag === '--timeout' && Number(value) > 0) {
      parsed.timeout = Number(value);
      i++;
    } else if (flag === '--then' && value) {
      parsed.then = [value, JSON.parse(argv[i + 2] ?? '[]') as unknown[]];
      i += 2;
    } else if (flag.startsWith('--')) {
      usage();
    } else {
      positional.push(flag);
    }
  }
  const [deployment, fn, args = '[]', kwargs = '{}', ...rest] = positional;
  if (!deployment || !fn || rest.length > 0) {
    usage();
  }
  return {
    ...parsed,
    deployment,
    fn,
    args: JSON.parse(args) as unknown[],
    kwargs: JSON.parse(kwargs) as Record<string, unknown>,
  };
}

async function main(argv: string[]): Promise<number> {
  const a = parse(argv);
  const client = new VastrpcClient(optionsFromEnv(process.env));
  let values = 0;
  try {
    const endpoint = await client.endpoint(a.deployment, a.tag);
    const options: CallOptions = { timeout: a.timeout };
    if (a.logs) {
      options.onLog = (stream, text) => print({ log: stream, text });
    }
    let stopped = false;
    if (a.take === 0) {
      stopped = true; // nothing asked for: the call never starts
    } else {
      for await (const value of endpoint.stream(a.fn, a.args, a.kwargs, options)) {
        values += 1;
        print({ value, received_at: now() });
        if (values === a.take) {
          stopped = true;
          break; // cancels the call on the worker
        }
      }
    }
    print(stopped ? { end: 'stopped', values, at: now() } : { end: 'done', values });
    if (a.then !== null) {
      print({ then: await endpoint.call(a.then[0], a.then[1]) });
    }
    print({ workers: endpoint.readyWorkers().map((w) => ({ worker_id: w.workerId, calls: w.calls })) });
    return 0;
  } catch (err) {
    print({ error: describeError(err), values });
    return 1;
  } finally {
    client.close();
  }
}

function usage(): never {
  process.stderr.write(
    "usage: node dist/stream.js DEPLOYMENT FUNCTION ['[args JSON]'] ['{kwargs JSON}'] [--tag TAG] " +
      "[--timeout SECONDS] [--take N] [--logs] [--then FUNCTION '[args JSON]']\n",
  );
  process.exit(2);
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
