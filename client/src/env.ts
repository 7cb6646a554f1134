/**
 * Client options from VASTRPC_* environment variables, for the command-line scripts (entry points only).
 */

import type { ClientOptions } from './client';
import { VastrpcError } from './errors';

/**
 * Options from the same variables the Python client reads: VASTRPC_CONTROL_ADDRESS, VASTRPC_API_KEY,
 * and for TLS VASTRPC_TLS_CA, VASTRPC_TLS_CERT, VASTRPC_TLS_KEY.
 *
 * @throws VastrpcError when the address or the key is unset.
 */
export function optionsFromEnv(env: NodeJS.ProcessEnv): ClientOptions {
  const controlAddress = env.VASTRPC_CONTROL_ADDRESS ?? '';
  const apiKey = env.VASTRPC_API_KEY ?? '';
  if (!controlAddress || !apiKey) {
    throw new VastrpcError(
      'set VASTRPC_CONTROL_ADDRESS (host:port of the control service, or several comma-separated) and ' +
        'VASTRPC_API_KEY (its HOME/api_key)',
    );
  }
  const options: ClientOptions = { controlAddress, apiKey };
  if (env.VASTRPC_TLS_CA) options.caFile = env.VASTRPC_TLS_CA;
  if (env.VASTRPC_TLS_CERT) options.certFile = env.VASTRPC_TLS_CERT;
  if (env.VASTRPC_TLS_KEY) options.keyFile = env.VASTRPC_TLS_KEY;
  return options;
}

/** An error as a JSON-friendly object: its class name and message, and for a RemoteError the Python side. */
export function describeError(err: unknown): Record<string, string> {
  if (!(err instanceof Error)) {
    return { name: 'Error', message: String(err) };
  }
  const described: Record<string, string> = { name: err.name, message: err.message };
  const remote = err as Partial<{ type: string; remoteMessage: string; remoteTraceback: string }>;
  if (typeof remote.type === 'string') described.type = remote.type;
  if (typeof remote.remoteMessage === 'string') described.remote_message = remote.remoteMessage;
  if (typeof remote.remoteTraceback === 'string') described.traceback = remote.remoteTraceback;
  return described;
}
