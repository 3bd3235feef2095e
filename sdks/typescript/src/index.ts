/**
 * conveyor's TypeScript SDK: {@link Client} for the jobs API, {@link Worker} to run job handlers
 * over the worker protocol, {@link verifyWebhook} for signed deliveries.
 */

export { Client } from './client.js';
export type {
  AddBatchJobsOptions,
  BatchJob,
  BatchJobsOptions,
  BatchMember,
  ChildJob,
  ClientOptions,
  CreateBatchOptions,
  EventsOptions,
  FollowOptions,
  ListOptions,
  ScheduleJobOptions,
  ScheduleSpec,
  SubmitOptions,
  WaitOptions,
} from './client.js';
export { Worker, WaitForChildren } from './worker.js';
export type { Handler, HandleOptions, JobContext, WorkerLogger, WorkerOptions } from './worker.js';
export { WorkerApi, isLeaseLost } from './protocol.js';
export type { ChildrenOptions, CompleteItem, FailItem, LeaseOptions, ProgressReport } from './protocol.js';
export { verifyWebhook, signWebhook, WEBHOOK_TOLERANCE_SECS } from './webhooks.js';
export type { VerifyWebhookOptions, WebhookHeaders } from './webhooks.js';
export {
  ConveyorError,
  ConveyorConnectionError,
  FatalError,
  JobAbortedError,
  JobCancelledError,
  JobTimeoutError,
  LeaseLostError,
  WorkerShutdownError,
  WebhookVerificationError,
  isTransient,
  parseRetryAfter,
} from './errors.js';
export type { AbortCause, Problem } from './errors.js';
export { Transport } from './http.js';
export type { RequestOptions, TokenSource, TransportOptions } from './http.js';
export { SseParser } from './sse.js';
export type { SseMessage } from './sse.js';
export { TERMINAL_EVENTS, TERMINAL_STATUSES } from './types.js';
export type * from './types.js';
