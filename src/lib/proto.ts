import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type GrpcObject, loadPackageDefinition } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { ProtoGrpcType } from '../gen/dispatcher.ts';

export type * from '../gen/agentflow/v1/AgentMessage.ts';
export type { DispatcherClient } from '../gen/agentflow/v1/Dispatcher.ts';
export type * from '../gen/agentflow/v1/DispatcherMessage.ts';

/**
 * The largest input, output or mail payload, in bytes of JSON. etcd keeps
 * anything over 128 KiB in chunks (src/state/blobs.ts), so this is bounded by
 * memory and latency, not by etcd's request limit.
 */
export const MAX_PAYLOAD_BYTES = 4 * 1024 * 1024;
/** The largest message either side accepts: one payload plus room for the envelope. */
export const MAX_MESSAGE_BYTES = MAX_PAYLOAD_BYTES + 1024 * 1024;

/** Keepalive on both ends: a dead peer is noticed within ~30 s even on an idle stream. */
export const KEEPALIVE_OPTIONS = {
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.http2.max_pings_without_data': 0,
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
} as const;

const here = dirname(fileURLToPath(import.meta.url));
// src/lib and dist/lib both sit two levels below the package root.
const protoRoot = join(here, '..', '..', 'proto');

let cached: ProtoGrpcType | undefined;

/**
 * The agentflow.v1 package. These loadSync options are the ones
 * scripts/proto-types.ts gives proto-loader-gen-types: keep them in step.
 */
export function agentflowProto(): ProtoGrpcType {
  cached ??= loadPackageDefinition(
    loadSync('agentflow/v1/dispatcher.proto', {
      includeDirs: [protoRoot],
      keepCase: false,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    }),
  ) as unknown as ProtoGrpcType & GrpcObject;
  return cached;
}
