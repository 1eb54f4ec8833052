/**
 * Saga push browser client: type declarations for `/client.js` (docs/protocol.md section 11).
 */

export type TransportName = 'websocket' | 'sse'
export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'disconnected'

/** What every rejection and every 'error' event carries: the server's error data or a client code. */
export interface SagaError {
  /** Server codes (docs/protocol.md section 7) or client codes: TIMEOUT, NOT_CONNECTED, CONNECTION_CLOSED,
   *  DISCONNECTED, TOKEN_EXPIRED, TOKEN_ERROR, ORIGIN_NOT_ALLOWED, RECONNECT_FAILED, TRANSPORT_FAILED,
   *  NOT_IN_PROJECT, LEFT_PROJECT, INVALID_SERVER_MESSAGE. */
  code: string
  message: string
  projectId?: string
  retryAfterMs?: number
  closeCode?: number
  cause?: SagaError
  [key: string]: unknown
}

export interface SagaClientOptions {
  /** http(s) base URL of the server; default: the page's origin. */
  url?: string
  /** A static JWT. It never goes into a URL: before each connection the client trades it for a
   *  one-time ticket (POST /api/tickets, token in the Authorization header) and connects with
   *  `?ticket=`; a refreshed token reaches a WebSocket as an `auth` frame. */
  token?: string
  /** Called on every (re)connect and about 30 s (or 10% of the lifetime) before the token expires. */
  getToken?: () => string | Promise<string>
  /** Tried in this order; default ['websocket', 'sse']. */
  transports?: TransportName[]
  /** Default true. */
  autoReconnect?: boolean
  /** Consecutive failed attempts before giving up; default Infinity. */
  reconnectAttempts?: number
  /** First backoff ceiling in ms (exponential, full jitter); default 1000. */
  reconnectDelay?: number
  /** Backoff ceiling in ms; default 30000. */
  maxReconnectDelay?: number
  /** ms before a join, leave, ping or auth request, or a ticket request for SSE, fails; default 10000. */
  requestTimeout?: number
  /** ms a WebSocket has to get its ticket, open and answer a first ping before the next transport is tried; default 4000. */
  fallbackTimeout?: number
  /** Implementations to use instead of the globals (tests, non-browser hosts); fetch also gets tickets. */
  WebSocket?: typeof WebSocket
  EventSource?: typeof EventSource
  fetch?: typeof fetch
}

/** Any message from the server, as received. */
export interface SagaMessage<D = any> {
  event: string
  data: D
  projectId?: string
  seq?: number
  ts?: number
  ack?: number
}

export interface JoinedProject {
  projectId: string
  role?: string
  /** The project's latest event seq at the join. */
  seq: number
  /** Present when the join resumed from a known seq. */
  recovered?: boolean
  /** Who is online in the project at the join (the joining user included), sorted by userId.
   *  Absent when the project has more online users than the server tells of one by one
   *  (PRESENCE_MAX_USERS): then no presence messages come for it either. */
  online?: OnlineUser[]
}

/** A user online in a project: an entry of joined_project.online and of presence(), the data of user_online. */
export interface OnlineUser {
  userId: string
  /** null when the user's name is not known */
  userName: string | null
}

export interface LeftProject {
  projectId: string
  reason: 'requested' | 'access_revoked' | string
}

export interface Story {
  id: string
  projectId: string
  title: string
  status: string
  audioUrl: string | null
  /** epoch ms */
  createdAt: number
  [key: string]: unknown
}

export interface Interaction {
  id: string
  storyId: string
  /** null once the facilitator's user is deleted */
  facilitatorId: string | null
  type: 'comment' | 'followup' | string
  content: string
  /** epoch ms; null until answered */
  answeredAt: number | null
  /** epoch ms */
  createdAt: number
  [key: string]: unknown
}

export interface TypingData {
  storyId: string
  userId: string
  /** null when the sender's name is not known */
  userName: string | null
}

/** What onTyping handlers get. */
export interface TypingEvent extends TypingData {
  projectId: string
  typing: boolean
}

/** Data of each server event name. */
export interface SagaEventData {
  joined_project: JoinedProject
  left_project: LeftProject
  authenticated: { userId: string; expiresAt?: string | number }
  pong: { ts: number }
  server_shutdown: { message: string; reconnectAfterMs: number }
  typing_start: TypingData
  typing_stop: TypingData
  /** Also applied to presence(): prefer on('presence'), which skips messages that change nothing. */
  user_online: OnlineUser
  user_offline: { userId: string }
  story_uploaded: { story: Story }
  story_processing: { storyId: string; status: string }
  story_processed: { storyId: string; status: string }
  transcript_updated: { storyId: string; transcript: string | null }
  interaction_added: { interaction: Interaction; storyId: string }
  interaction_updated: { interaction: Interaction; storyId: string }
  export_started: { exportId: string; status: string }
  export_progress: { exportId: string; progress: number }
  /** expiresAt in epoch ms; downloadUrl and expiresAt are null when the export row has none */
  export_ready: { exportId: string; status: string; downloadUrl: string | null; expiresAt: number | null }
  export_failed: { exportId: string; status: string; error: string | null }
}

export type Unsubscribe = () => void
export type Handler<D> = (data: D, message: SagaMessage<D>) => void

export declare class SagaClient {
  constructor(options?: SagaClientOptions)

  readonly options: Required<Omit<SagaClientOptions, 'token' | 'getToken' | 'WebSocket' | 'EventSource' | 'fetch'>> &
    Pick<SagaClientOptions, 'token' | 'getToken'>

  /** The transport in use; null while not connected. */
  readonly transport: TransportName | null
  readonly state: ConnectionState
  /** Projects joined or being joined. */
  readonly projects: string[]
  /** The last seq seen for a project. */
  lastSeq(projectId: string): number | undefined
  /** Who is online in a joined project: a copy of its list, sorted by userId, kept up to date from
   *  joined_project (which replaces it, after a reconnect too) and user_online / user_offline.
   *  null when the project is not joined, its join is not answered yet, or the server sent no list
   *  (too many online users); [] is a known empty list (a service token's). The list of a project
   *  that is left is forgotten; while reconnecting, the last one stays. */
  presence(projectId: string): OnlineUser[] | null

  /** Resolves once connected (retrying with backoff while autoReconnect is on); rejects on a fatal error,
   *  when attempts run out, or when disconnect() is called first. */
  connect(): Promise<void>
  /** Closes everything, stops reconnecting, state 'disconnected'. Joined projects are kept for a later connect(). */
  disconnect(): void
  /** Resolves with the joined_project data; rejects with the error data (PROJECT_ACCESS_DENIED, TIMEOUT, ...). */
  joinProject(projectId: string): Promise<JoinedProject>
  /** Resolves with the left_project data; rejects with NOT_IN_PROJECT when not joined. */
  leaveProject(projectId: string): Promise<LeftProject>
  /** Round trip in ms: ping/pong over WebSocket, a fetch of /api/websocket/health over SSE. */
  ping(): Promise<number>
  /** typing_start (typing true) or typing_stop; WebSocket only. Returns whether it was sent. */
  sendTyping(projectId: string, storyId: string, typing?: boolean): boolean

  on<E extends keyof SagaEventData>(event: E, fn: Handler<SagaEventData[E]>): Unsubscribe
  on(event: 'state', fn: (state: ConnectionState) => void): Unsubscribe
  on(event: ConnectionState, fn: () => void): Unsubscribe
  on(event: 'resync', fn: (projectId: string, joined: JoinedProject) => void): Unsubscribe
  /** Every change of presence(projectId), with a copy of the new list (null: no longer known, a join
   *  answered without a list). Not fired for a message that changes nothing, nor when the project is left. */
  on(event: 'presence', fn: (projectId: string, online: OnlineUser[] | null) => void): Unsubscribe
  on(event: 'error', fn: (error: SagaError, message?: SagaMessage<SagaError>) => void): Unsubscribe
  on(event: 'message', fn: (message: SagaMessage) => void): Unsubscribe
  on(event: string, fn: (...args: any[]) => void): Unsubscribe
  off(event: string, fn: (...args: any[]) => void): void
  once(event: string, fn: (...args: any[]) => void): Unsubscribe

  onStoryUploaded(fn: Handler<SagaEventData['story_uploaded']>): Unsubscribe
  onInteractionAdded(fn: Handler<SagaEventData['interaction_added']>): Unsubscribe
  onTranscriptUpdated(fn: Handler<SagaEventData['transcript_updated']>): Unsubscribe
  onExportReady(fn: Handler<SagaEventData['export_ready']>): Unsubscribe
  /** typing_start and typing_stop together. */
  onTyping(fn: (data: TypingEvent, message: SagaMessage<TypingData>) => void): Unsubscribe
}

/** Event names the client listens for on the SSE stream. */
export declare const SSE_EVENTS: readonly string[]
/** The JWT payload, unverified; null when unreadable. */
export declare function decodeJwt(token: string): Record<string, unknown> | null
/** The token's exp in ms since the epoch; null without exp. */
export declare function tokenExpiry(token: string): number | null
/** ms until the token should be refreshed: min(30 s, 10% of its lifetime) before exp; null without exp. */
export declare function refreshDelay(token: string, nowMs?: number): number | null
/** random(0, min(max, base * 2^attempt)). */
export declare function backoffDelay(attempt: number, base: number, max: number, random?: () => number): number
/** "P1:17,P2:4" from [projectId, lastSeq] pairs; pairs without a seq are left out. */
export declare function buildSince(entries: Iterable<[string, number | undefined]>): string

export default SagaClient
