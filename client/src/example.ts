/**
 * Example: call one deployed Python function with JSON arguments and print its result as JSON.
 *
 *   VASTRPC_CONTROL_ADDRESS=127.0.0.1:PORT VASTRPC_API_KEY=KEY \
 *     node dist/example.js DEPLOYMENT FUNCTION '[2, 3]' '{"scale": 10}'
 *
 * A remote exception prints its Python type, message and traceback to stderr, and exits 1.
 */

import { RemoteError, VastrpcClient } from './index';
import { describeError, optionsFromEnv } from './env';

async function main(argv: string[]): Promise<number> {
  const [deployment, fn, args = '[]', kwargs = '{}'] = argv;
  if (!deployment || !fn) {
    process.stderr.write("usage: node dist/example.js DEPLOYMENT FUNCTION ['[args JSON]'] ['{kwargs JSON}']\n");
    return 2;
  }
  const client = new VastrpcClient(optionsFromEnv(process.env));
  try {
    const endpoint = await client.endpoint(deployment, process.env.VASTRPC_TAG || 'default');
    const result = await endpoint.call(
      fn,
      JSON.parse(args) as unknown[],
      JSON.parse(kwargs) as Record<string, unknown>,
    );
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return 0;
  } catch (err) {
    if (err instanceof RemoteError) {
      process.stderr.write(`${fn} raised ${err.type}: ${err.remoteMessage}\n${err.remoteTraceback}`);
    } else {
      process.stderr.write(`${JSON.stringify(describeError(err))}\n`);
    }
    return 1;
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
