/**
 * Saga push browser client (an ES module with no dependencies).
 *
 * Contract: docs/protocol.md section 11. In short:
 *
 *   import { SagaClient } from '/client.js'
 *   const client = new SagaClient({ url, token })      // or getToken: async () => 'jwt'
 *   await client.connect()
 *   await client.joinProject('p1')
 *   client.onStoryUploaded((data, message) => { ... })
 *
 * Choices made where the protocol leaves room (see also client.d.ts):
 * - No token ever goes into a URL (proxies, logs and histories keep URLs). Before each WebSocket
 *   and each event stream it opens, the client trades its token for a one-time ticket
 *   (`POST /api/tickets` with `Authorization: Bearer`) and connects with `?ticket=`: on both
 *   transports alike, since neither WebSocket nor EventSource can send headers, and a refused
 *   token then shows as an HTTP 401 the client can read. A refreshed token goes to a WebSocket
 *   as `{"event":"auth","data":{"token"}}`.
 * - A WebSocket counts as working once it answers a first `ping` within `fallbackTimeout`
 *   (4 s, the ticket included); otherwise the next transport of `transports` is tried.
 * - SSE: EventSource's own reconnect would reuse the URL and its spent ticket, so the client
 *   closes a stream that fails and reconnects itself: a new ticket, and `lastEventId=<cursor>`
 *   in the query. Joined projects are part of the stream URL, so joining or leaving re-opens
 *   the stream with `since=P1:17,P2:4` (the last `seq` seen per project); a token refresh
 *   re-opens it with `lastEventId=<cursor>` when the project list did not change. With no
 *   project joined there is no stream at all (the server answers 400 to an empty list): the
 *   client is "connected" once `/api/websocket/health` answers, and opens the stream on the
 *   first join.
 * - SSE `ping()` is the round trip of `fetch(url + '/api/websocket/health')`.
 * - Exactly once: a domain event whose `seq` is not above the last one seen for its project is
 *   dropped, and so is a domain event of a project that is not joined (any more).
 * - Joined projects and their last `seq` survive `disconnect()`: a later `connect()` resumes them.
 * - Presence: `presence(projectId)` is the project's online list, kept from each `joined_project`
 *   (the fresh state after every reconnect: it replaces the list) and the `user_online` /
 *   `user_offline` messages applied as state changes (a user already listed coming online, or one
 *   not listed going offline, changes nothing: a join's list and a message already on its way may
 *   overlap). A list that is not known is null, not []: a service token's list is known and empty.
 *   The list of a project that is left is forgotten; while reconnecting, the last one stays.
 * - Every rejection and every 'error' event is a plain object `{code, message, ...}`: the server's
 *   error data, or one of the client's own codes (TIMEOUT, NOT_CONNECTED, CONNECTION_CLOSED,
 *   DISCONNECTED, TOKEN_EXPIRED, TOKEN_ERROR, ORIGIN_NOT_ALLOWED, RECONNECT_FAILED,
 *   TRANSPORT_FAILED, NOT_IN_PROJECT, LEFT_PROJECT, INVALID_SERVER_MESSAGE).
 *
 * @module @saga/push-client
 */

/** Event names the server may send over SSE (sections 3 to 5); each gets its own listener. */
export const SSE_EVENTS = [
  'joined_project', 'left_project', 'error', 'server_shutdown', 'typing_start', 'typing_stop',
  'user_online', 'user_offline',
  'story_uploaded', 'story_processing', 'story_processed', 'transcript_updated',
  'interaction_added', 'interaction_updated',
  'export_started', 'export_progress', 'export_ready', 'export_failed',
]

/** After a WebSocket failure, reconnects go straight to SSE for this long, then try WS again. */
const WS_RETRY_AFTER_MS = 5 * 60 * 1000
const MAX_TIMER_MS = 2 ** 31 - 1

/** @returns {number} a monotonic clock in ms */
const now = () => (globalThis.performance && performance.now ? performance.now() : Date.now())

/**
 * Decodes the payload of a JWT without verifying it (base64url JSON).
 * @param {string} token
 * @returns {object|null} the claims, or null when the token is not a readable JWT
 */
export function decodeJwt(token) {
  try {
    const part = String(token).split('.')[1]
    if (!part) return null
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((part.length + 3) % 4)
    const bin = atob(b64)
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0))
    const claims = JSON.parse(new TextDecoder().decode(bytes))
    return claims && typeof claims === 'object' ? claims : null
  } catch {
    return null
  }
}

/**
 * @param {string} token
 * @returns {number|null} the token's expiry in ms since the epoch, or null when it has no `exp`
 */
export function tokenExpiry(token) {
  const claims = decodeJwt(token)
  return claims && typeof claims.exp === 'number' ? claims.exp * 1000 : null
}

/**
 * How long to wait before asking for a new token: the refresh happens
 * min(30 s, 10% of the token's lifetime) before `exp`. The lifetime runs from `iat`, or from
 * `nowMs` when the token has no `iat`.
 * @param {string} token
 * @param {number} [nowMs] the current time (ms since the epoch)
 * @returns {number|null} the delay in ms (0 when already due), or null when the token has no `exp`
 */
export function refreshDelay(token, nowMs = Date.now()) {
  const claims = decodeJwt(token)
  if (!claims || typeof claims.exp !== 'number') return null
  const exp = claims.exp * 1000
  const start = typeof claims.iat === 'number' ? claims.iat * 1000 : nowMs
  const lead = Math.min(30000, Math.max(0, exp - start) * 0.1)
  return Math.max(0, exp - lead - nowMs)
}

/**
 * Exponential backoff with full jitter: random(0, min(max, base * 2^attempt)).
 * @param {number} attempt 0 for the first retry
 * @param {number} base the first delay (reconnectDelay)
 * @param {number} max the ceiling (maxReconnectDelay)
 * @param {() => number} [random] a source of numbers in [0, 1)
 * @returns {number} ms
 */
export function backoffDelay(attempt, base, max, random = Math.random) {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30))
  return random() * ceiling
}

/**
 * Builds the SSE `since` parameter value from the last seq seen per project.
 * Projects without a known seq are left out (they start live).
 * @param {Iterable<[string, number|undefined]>} entries [projectId, lastSeq] pairs
 * @returns {string} e.g. "P1:17,P2:4" (project ids URL-encoded), or "" when none is known
 */
export function buildSince(entries) {
  const parts = []
  for (const [id, seq] of entries) {
    if (typeof seq === 'number' && seq >= 0) parts.push(`${encodeURIComponent(id)}:${seq}`)
  }
  return parts.join(',')
}

/** Orders online users as the server does: by userId, code unit by code unit (not by locale). */
const byUserId = (a, b) => (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0)

/** One online user as the client keeps it: `{userId, userName}`, userName null when unknown. */
const onlineUser = (u) => ({ userId: String(u.userId), userName: typeof u.userName === 'string' ? u.userName : null })

/** @param {Array<object>|null} a @param {Array<object>|null} b @returns {boolean} the same online list */
function sameOnline(a, b) {
  if (!a || !b) return a === b
  return a.length === b.length && a.every((u, i) => u.userId === b[i].userId && u.userName === b[i].userName)
}

/** Normalises anything thrown or received into `{code, message, ...}`. @param {any} data @param {string} code @param {string} message */
function asError(data, code, message) {
  if (data && typeof data === 'object' && typeof data.code === 'string') return data
  if (data instanceof Error) return { code, message: data.message }
  return { code, message: typeof data === 'string' ? data : message }
}

/** Calls fn later; an exception thrown by a handler must not break the client. */
function report(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err)
  else setTimeout(() => { throw err })
}

/**
 * A real-time client for Saga push: WebSocket first, Server-Sent Events as a fallback,
 * automatic reconnects, token refresh, and exactly-once in-order domain events per project.
 */
export class SagaClient {
  /**
   * @param {object} [options]
   * @param {string} [options.url] http(s) base URL of the server; default: the page's origin
   * @param {string} [options.token] a static JWT
   * @param {() => (string|Promise<string>)} [options.getToken] called on every (re)connect and before expiry
   * @param {Array<'websocket'|'sse'>} [options.transports] tried in order (default both)
   * @param {boolean} [options.autoReconnect] default true
   * @param {number} [options.reconnectAttempts] consecutive failed attempts before giving up (default Infinity)
   * @param {number} [options.reconnectDelay] first backoff ceiling in ms (default 1000)
   * @param {number} [options.maxReconnectDelay] backoff ceiling in ms (default 30000)
   * @param {number} [options.requestTimeout] ms before a request (join, leave, ping, auth) fails (default 10000)
   * @param {number} [options.fallbackTimeout] ms a WebSocket has to open and answer (default 4000)
   * @param {typeof WebSocket} [options.WebSocket] implementation to use (tests, non-browser hosts)
   * @param {typeof EventSource} [options.EventSource] implementation to use
   * @param {typeof fetch} [options.fetch] implementation to use
   */
  constructor(options = {}) {
    const g = globalThis
    this.options = {
      url: options.url || (g.location && g.location.origin) || '',
      token: options.token ?? null,
      getToken: options.getToken ?? null,
      transports: options.transports ?? ['websocket', 'sse'],
      autoReconnect: options.autoReconnect ?? true,
      reconnectAttempts: options.reconnectAttempts ?? Infinity,
      reconnectDelay: options.reconnectDelay ?? 1000,
      maxReconnectDelay: options.maxReconnectDelay ?? 30000,
      requestTimeout: options.requestTimeout ?? 10000,
      fallbackTimeout: options.fallbackTimeout ?? 4000,
    }
    this._WebSocket = options.WebSocket || g.WebSocket
    this._EventSource = options.EventSource || g.EventSource
    this._fetch = options.fetch || (g.fetch ? g.fetch.bind(g) : null)
    this._base = String(this.options.url).replace(/\/+$/, '')
    this._token = this.options.token
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map()
    /** projectId -> { lastSeq, joined, info, waiters, online } ; the projects the user wants joined */
    this._projects = new Map()
    /** ack -> { resolve, reject, timer } */
    this._pending = new Map()
    this._ack = 0
    /** @type {'connecting'|'connected'|'reconnecting'|'disconnected'} */
    this._state = 'disconnected'
    this._transport = null
    this._ws = null
    this._es = null
    this._esCancel = null
    this._streamSeq = 0 // bumped by every stream close: an open waiting for its ticket compares it
    this._streamKey = ''
    this._cursor = ''
    this._cursorKey = ''
    this._gen = 0 // bumped by every connection cycle and by disconnect(): stale callbacks compare it
    this._attempt = 0
    this._connectWaiters = []
    this._preferred = null
    this._wsFailedAt = 0
    this._shutdownDelay = null
    this._sleepTimer = null
    this._refreshTimer = null
    this._reopenQueued = false
  }

  // ---------------------------------------------------------------- public API

  /** @returns {'websocket'|'sse'|null} the transport in use, null while not connected */
  get transport() { return this._transport }

  /** @returns {'connecting'|'connected'|'reconnecting'|'disconnected'} */
  get state() { return this._state }

  /** @returns {string[]} the projects joined or being joined */
  get projects() { return [...this._projects.keys()] }

  /** @param {string} projectId @returns {number|undefined} the last seq seen for the project */
  lastSeq(projectId) {
    const entry = this._projects.get(String(projectId))
    return entry ? entry.lastSeq : undefined
  }

  /**
   * Who is online in a joined project: a copy of its list, sorted by userId, kept up to date from
   * `joined_project` and the `user_online` / `user_offline` messages (subscribe with
   * `on('presence', (projectId, online) => {})`).
   * @param {string} projectId
   * @returns {Array<{userId: string, userName: string|null}>|null} null when the project is not
   *   joined, its join has not been answered yet, or the server sent no list (more online users
   *   than it tells of one by one); while reconnecting, the list from before
   */
  presence(projectId) {
    const entry = this._projects.get(String(projectId))
    return entry && entry.online ? entry.online.map((u) => ({ ...u })) : null
  }

  /**
   * Connects (trying the transports in order) and rejoins the projects already joined.
   * Resolves once connected; while autoReconnect is on, failed attempts are retried with backoff.
   * Rejects on a fatal error (rejected static token, origin refused), after the last allowed
   * attempt, or when disconnect() is called first.
   * @returns {Promise<void>}
   */
  connect() {
    if (this._state === 'connected') return Promise.resolve()
    const promise = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }))
    if (this._state === 'disconnected') {
      this._attempt = 0
      this._setState('connecting')
      this._cycle(0)
    }
    return promise
  }

  /** Closes everything and stops reconnecting. Joined projects are kept for a later connect(). */
  disconnect() {
    this._gen++
    clearTimeout(this._sleepTimer)
    const err = { code: 'DISCONNECTED', message: 'disconnect() was called' }
    this._teardown(err)
    for (const entry of this._projects.values()) this._settleWaiters(entry, null, err)
    this._settleConnect(err)
    this._setState('disconnected')
  }

  /**
   * Joins a project. Resolves with the `joined_project` data; rejects with the error data
   * (e.g. `{code:'PROJECT_ACCESS_DENIED', message, projectId}`) or TIMEOUT after requestTimeout.
   * May be called before connect(): the join happens once connected.
   * @param {string} projectId
   * @returns {Promise<object>}
   */
  joinProject(projectId) {
    const id = String(projectId)
    let entry = this._projects.get(id)
    if (entry && entry.joined && this._state === 'connected') return Promise.resolve(entry.info)
    const isNew = !entry
    if (isNew) {
      entry = { lastSeq: undefined, joined: false, info: null, waiters: [], online: null }
      this._projects.set(id, entry)
    }
    const joinEntry = entry
    const promise = new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null }
      waiter.timer = setTimeout(() => {
        joinEntry.waiters = joinEntry.waiters.filter((w) => w !== waiter)
        if (!joinEntry.joined && !joinEntry.waiters.length && this._projects.get(id) === joinEntry) {
          this._projects.delete(id) // give up the join, and tell the server in case it did join
          if (this._transport === 'websocket') this._request('leave_project', { projectId: id }).catch(() => {})
          if (this._transport === 'sse') this._scheduleReopen()
        }
        reject({ code: 'TIMEOUT', message: `join_project ${id}: no answer within ${this.options.requestTimeout} ms`, projectId: id })
      }, this.options.requestTimeout)
      joinEntry.waiters.push(waiter)
    })
    if (isNew && this._state === 'connected') {
      if (this._transport === 'websocket') this._sendJoin(id)
      else this._scheduleReopen()
    }
    return promise
  }

  /**
   * Leaves a project. Resolves with the `left_project` data (`{projectId, reason:'requested'}`).
   * Rejects with NOT_IN_PROJECT when the project was not joined.
   * @param {string} projectId
   * @returns {Promise<object>}
   */
  leaveProject(projectId) {
    const id = String(projectId)
    const entry = this._projects.get(id)
    if (!entry) return Promise.reject({ code: 'NOT_IN_PROJECT', message: `project ${id} is not joined`, projectId: id })
    this._projects.delete(id)
    const left = { projectId: id, reason: 'requested' }
    this._settleWaiters(entry, null, { code: 'LEFT_PROJECT', message: `leaveProject(${id}) was called`, projectId: id })
    if (this._transport === 'websocket') {
      // Left locally in any case; a connection lost meanwhile takes the membership with it.
      return this._request('leave_project', { projectId: id })
        .catch((err) => (err.code === 'CONNECTION_CLOSED' || err.code === 'NOT_CONNECTED' ? left : Promise.reject(err)))
    }
    if (this._transport === 'sse') {
      this._scheduleReopen()
      this._emit('left_project', left, { event: 'left_project', data: left })
    }
    return Promise.resolve(left)
  }

  /**
   * Measures the round trip to the server in ms: a `ping` frame answered by `pong` over WebSocket,
   * a `fetch` of `/api/websocket/health` over SSE.
   * @returns {Promise<number>}
   */
  async ping() {
    if (this._state !== 'connected') throw { code: 'NOT_CONNECTED', message: 'not connected' }
    const start = now()
    if (this._transport === 'websocket') await this._request('ping')
    else await this._health()
    return now() - start
  }

  /**
   * Sends typing_start (typing true) or typing_stop for a story of a joined project.
   * WebSocket only (SSE is one-way). @returns {boolean} whether the frame was sent
   * @param {string} projectId @param {string} storyId @param {boolean} [typing]
   */
  sendTyping(projectId, storyId, typing = true) {
    const ws = this._ws
    if (this._transport !== 'websocket' || !ws || ws.readyState !== 1) return false
    if (!this._projects.has(String(projectId))) return false
    ws.send(JSON.stringify({ event: typing ? 'typing_start' : 'typing_stop', data: { projectId: String(projectId), storyId: String(storyId) } }))
    return true
  }

  /**
   * Subscribes to an event: a server event name (handler gets `(data, message)`), or one of the
   * client's: 'state' (state), 'connecting' | 'connected' | 'reconnecting' | 'disconnected' (),
   * 'resync' (projectId, joinedData), 'presence' (projectId, online: a copy of presence(projectId),
   * on every change of it), 'error' (errorData, message?), 'message' (every message).
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void} unsubscribe
   */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set())
    this._handlers.get(event).add(fn)
    return () => this.off(event, fn)
  }

  /** Removes a handler added with on(). @param {string} event @param {Function} fn */
  off(event, fn) {
    const set = this._handlers.get(event)
    if (set) set.delete(fn)
  }

  /** Like on(), for one call only. @param {string} event @param {Function} fn @returns {() => void} */
  once(event, fn) {
    const off = this.on(event, (...args) => { off(); fn(...args) })
    return off
  }

  /** Saga helpers, as in the Saga client utility: each is on(eventName, fn). @param {Function} fn @returns {() => void} */
  onStoryUploaded(fn) { return this.on('story_uploaded', fn) }
  /** @param {Function} fn @returns {() => void} */
  onInteractionAdded(fn) { return this.on('interaction_added', fn) }
  /** @param {Function} fn @returns {() => void} */
  onTranscriptUpdated(fn) { return this.on('transcript_updated', fn) }
  /** @param {Function} fn @returns {() => void} */
  onExportReady(fn) { return this.on('export_ready', fn) }

  /** typing_start and typing_stop together: fn gets `{storyId, userId, userName, projectId, typing}`. @param {Function} fn @returns {() => void} */
  onTyping(fn) {
    const wrap = (typing) => (data, message) => fn({ ...data, projectId: message && message.projectId, typing }, message)
    const offStart = this.on('typing_start', wrap(true))
    const offStop = this.on('typing_stop', wrap(false))
    return () => { offStart(); offStop() }
  }

  // ---------------------------------------------------------------- connection cycle

  /** One connection attempt (token, then each transport in order), after `delay` ms. */
  async _cycle(delay) {
    const gen = ++this._gen
    if (delay > 0) {
      await new Promise((resolve) => { this._sleepTimer = setTimeout(resolve, Math.min(delay, MAX_TIMER_MS)) })
      if (gen !== this._gen) return
    }
    let result
    try {
      result = await this._obtainToken()
      if (gen !== this._gen) return
      if (!result) result = await this._tryTransports(gen)
    } catch (err) {
      result = { error: asError(err, 'TOKEN_ERROR', 'getToken failed'), report: true }
    }
    if (gen !== this._gen) return
    if (result.ok) this._onConnected(result.transport)
    else this._afterFailure(result)
  }

  /** Calls getToken (every cycle) or checks the static token. @returns {Promise<object|null>} a failure or null */
  async _obtainToken() {
    if (this.options.getToken) {
      const token = await this.options.getToken()
      if (!token) return { error: { code: 'TOKEN_ERROR', message: 'getToken returned no token' }, report: true }
      this._token = String(token)
      return null
    }
    const exp = tokenExpiry(this._token)
    if (exp !== null && exp <= Date.now()) return { fatal: true, error: { code: 'TOKEN_EXPIRED', message: 'the token has expired and no getToken was given' } }
    return null
  }

  /** The transports to try, the last working one first (WebSocket again after a while). */
  _transportOrder() {
    const list = this.options.transports.filter((t) => (t === 'websocket' && this._WebSocket) || (t === 'sse' && this._EventSource))
    const pref = this._preferred
    if (!pref || list[0] === pref || !list.includes(pref)) return list
    if (pref === 'sse' && Date.now() - this._wsFailedAt > WS_RETRY_AFTER_MS) return list
    return [pref, ...list.filter((t) => t !== pref)]
  }

  async _tryTransports(gen) {
    let last = { error: { code: 'TRANSPORT_FAILED', message: 'no usable transport (WebSocket and EventSource missing?)' } }
    for (const name of this._transportOrder()) {
      const r = name === 'websocket' ? await this._openWebSocket(gen) : await this._openSse(gen)
      if (gen !== this._gen) return r
      if (r.ok) return { ok: true, transport: name }
      if (name === 'websocket') this._wsFailedAt = Date.now()
      if (r.fatal || r.auth) return r
      last = r
    }
    return last
  }

  _onConnected(name) {
    this._transport = name
    this._preferred = name
    this._attempt = 0
    if (name === 'websocket') {
      this._cursor = '' // events now come by WebSocket: an older SSE cursor is stale
      for (const id of this._projects.keys()) this._sendJoin(id)
    } else if (this._streamKey !== [...this._projects.keys()].join(',')) {
      this._scheduleReopen() // projects joined while the stream was opening
    }
    this._scheduleRefresh()
    this._setState('connected')
    this._settleConnect(null)
  }

  /** The live connection broke. @param {{error?: object, fatal?: boolean, auth?: boolean}} r */
  _onLost(r) {
    this._gen++ // the lost connection's callbacks are now stale
    this._afterFailure(r)
  }

  /** Decides, after a failed attempt or a lost connection, whether and when to try again. */
  _afterFailure(r) {
    this._teardown({ code: 'CONNECTION_CLOSED', message: 'the connection closed' })
    let { error, fatal } = r
    if (r.auth && !this.options.getToken) {
      const exp = tokenExpiry(this._token)
      if (exp !== null && exp <= Date.now()) {
        fatal = true
        error = { code: 'TOKEN_EXPIRED', message: 'the token has expired and no getToken was given' }
      }
    }
    if (error && (fatal || r.auth || r.report)) this._emit('error', error)
    const canRetry = !fatal && this.options.autoReconnect && this._attempt < this.options.reconnectAttempts
    if (!canRetry) {
      let err = error || { code: 'CONNECTION_CLOSED', message: 'the connection closed' }
      if (!fatal && this.options.autoReconnect) {
        err = { code: 'RECONNECT_FAILED', message: `gave up after ${this._attempt} attempts`, cause: error }
        this._emit('error', err)
      }
      this._settleConnect(err)
      this._setState('disconnected')
      return
    }
    const delay = this._shutdownDelay ?? backoffDelay(this._attempt, this.options.reconnectDelay, this.options.maxReconnectDelay)
    this._shutdownDelay = null
    this._attempt++
    this._setState('reconnecting')
    this._cycle(delay)
  }

  /** Closes the transports and fails pending requests (join waiters keep waiting). */
  _teardown(err) {
    const ws = this._ws
    this._ws = null
    if (ws) { try { ws.close(1000) } catch { /* already closed */ } }
    this._closeStream()
    this._transport = null
    clearTimeout(this._refreshTimer)
    for (const entry of this._projects.values()) entry.joined = false
    const pending = [...this._pending.values()]
    this._pending.clear()
    for (const p of pending) { clearTimeout(p.timer); p.reject(err) }
  }

  _settleConnect(err) {
    const waiters = this._connectWaiters
    this._connectWaiters = []
    for (const w of waiters) err ? w.reject(err) : w.resolve()
  }

  _setState(state) {
    if (state === this._state) return
    this._state = state
    this._emit('state', state)
    this._emit(state)
  }

  // ---------------------------------------------------------------- tokens

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer)
    if (!this.options.getToken) return
    const delay = refreshDelay(this._token)
    if (delay === null) return
    this._refreshTimer = setTimeout(() => this._refreshToken(), Math.min(Math.max(delay, 1000), MAX_TIMER_MS))
  }

  /** Gets a new token before the current one expires and hands it to the live transport. */
  async _refreshToken() {
    const gen = this._gen
    let token
    try {
      token = await this.options.getToken()
      if (!token) throw new Error('getToken returned no token')
    } catch (err) {
      if (gen !== this._gen) return
      this._emit('error', asError(err, 'TOKEN_ERROR', 'getToken failed'))
      this._refreshTimer = setTimeout(() => this._refreshToken(), 5000)
      return
    }
    if (gen !== this._gen || this._state !== 'connected') return
    this._token = String(token)
    if (this._transport === 'websocket') {
      this._request('auth', { token: this._token }).catch((err) => {
        if (gen === this._gen && err.code !== 'CONNECTION_CLOSED') this._emit('error', err)
      })
    } else if (this._transport === 'sse' && this._es) {
      this._scheduleReopen() // same projects: resumes from the stream's cursor
    }
    this._scheduleRefresh()
  }

  // ---------------------------------------------------------------- WebSocket

  /**
   * Gets a ticket, opens a WebSocket with it and waits for the answer to a first ping.
   * @returns {Promise<object>} {ok} or a failure {error, fatal?, auth?}
   */
  async _openWebSocket(gen) {
    const started = now()
    const t = await this._ticket(this.options.fallbackTimeout)
    if (gen !== this._gen) return { superseded: true }
    if (!t.ticket) return t
    return this._dialWebSocket(gen, t.ticket, Math.max(0, this.options.fallbackTimeout - (now() - started)))
  }

  _dialWebSocket(gen, ticket, timeout) {
    return new Promise((resolve) => {
      let ws
      try {
        ws = new this._WebSocket(`${this._base.replace(/^http/i, 'ws')}/ws?ticket=${encodeURIComponent(ticket)}`)
      } catch (err) {
        resolve({ error: asError(err, 'TRANSPORT_FAILED', 'WebSocket failed') })
        return
      }
      let done = false
      let opened = false
      const finish = (r) => {
        if (done) return
        done = true
        clearTimeout(timer)
        if (!r.ok) {
          if (this._ws === ws) this._teardown(r.error)
          try { ws.close() } catch { /* ignore */ }
        }
        resolve(r)
      }
      const timer = setTimeout(() => finish({ error: { code: 'TRANSPORT_FAILED', message: `WebSocket did not answer within ${this.options.fallbackTimeout} ms` } }), timeout)
      ws.onopen = () => {
        if (done || gen !== this._gen) return
        opened = true
        this._ws = ws
        this._request('ping', undefined, timeout).then(() => finish({ ok: true }), (error) => finish({ error }))
      }
      ws.onmessage = (ev) => {
        if (gen === this._gen && this._ws === ws) this._onFrame(ev.data)
      }
      ws.onerror = () => { /* a close event follows */ }
      ws.onclose = (ev) => {
        if (done) {
          if (gen === this._gen && this._ws === ws) this._onWsClosed(ev)
          return
        }
        if (ev.code === 1008) return finish({ fatal: true, error: { code: 'ORIGIN_NOT_ALLOWED', message: 'the server refused this origin (close 1008)' } })
        if (ev.code === 4401) return finish({ auth: true, error: { code: 'UNAUTHORIZED', message: ev.reason || 'token rejected (close 4401)' } })
        if (opened) return finish({ error: { code: 'TRANSPORT_FAILED', message: `WebSocket closed with ${ev.code}` } })
        // The handshake failed: a browser hides the HTTP status, so ask for it once (with the
        // token in a header: the ticket may be spent).
        clearTimeout(timer)
        this._probe(`${this._base}/ws`).then((p) => finish(this._probeFailure(p, 'WebSocket could not connect')))
      }
    })
  }

  /** A WebSocket that was connected closed. */
  _onWsClosed(ev) {
    const code = ev.code
    const reason = ev.reason ? `: ${ev.reason}` : ''
    if (code === 1008) return this._onLost({ fatal: true, error: { code: 'ORIGIN_NOT_ALLOWED', message: `origin not allowed (close 1008${reason})` } })
    if (code === 4401) return this._onLost({ auth: true, error: { code: 'UNAUTHORIZED', message: `token rejected or expired (close 4401${reason})` } })
    this._onLost({ error: { code: 'CONNECTION_CLOSED', message: `WebSocket closed (${code}${reason})`, closeCode: code } })
  }

  /**
   * Sends `{event, data, ack}` and waits for the answer with the same ack.
   * @returns {Promise<any>} the answer's data; rejects with the error data or TIMEOUT / NOT_CONNECTED
   */
  _request(event, data, timeout = this.options.requestTimeout) {
    return new Promise((resolve, reject) => {
      const ws = this._ws
      if (!ws || ws.readyState !== 1) return reject({ code: 'NOT_CONNECTED', message: 'not connected by WebSocket' })
      const ack = ++this._ack
      const timer = setTimeout(() => {
        this._pending.delete(ack)
        reject({ code: 'TIMEOUT', message: `${event}: no answer within ${timeout} ms` })
      }, timeout)
      this._pending.set(ack, { resolve, reject, timer })
      const frame = data === undefined ? { event, ack } : { event, data, ack }
      try {
        ws.send(JSON.stringify(frame))
      } catch (err) {
        clearTimeout(timer)
        this._pending.delete(ack)
        reject(asError(err, 'NOT_CONNECTED', 'send failed'))
      }
    })
  }

  /** Sends join_project for a wanted project, with `since` when a seq is known. */
  _sendJoin(id) {
    const entry = this._projects.get(id)
    if (!entry) return
    const data = typeof entry.lastSeq === 'number' ? { projectId: id, since: entry.lastSeq } : { projectId: id }
    this._request('join_project', data).catch((err) => {
      if (this._projects.get(id) !== entry || this._transport !== 'websocket') return
      if (err.code === 'CONNECTION_CLOSED' || err.code === 'NOT_CONNECTED') return // rejoined on reconnect
      if (err.code === 'TIMEOUT' && entry.joined) return // joined_project came without its ack
      if (err.code === 'RATE_LIMIT_EXCEEDED') {
        const gen = this._gen
        setTimeout(() => { if (gen === this._gen && this._projects.get(id) === entry) this._sendJoin(id) }, err.retryAfterMs || 1000)
        return
      }
      if (!this._failProject(id, { ...err, projectId: err.projectId ?? id })) this._emit('error', { ...err, projectId: err.projectId ?? id })
    })
  }

  // ---------------------------------------------------------------- Server-Sent Events

  /** Connects by SSE; projects refused with 403 are dropped (rejected) and the rest retried. */
  async _openSse(gen) {
    for (;;) {
      const r = await this._openStream(gen, true)
      if (!r.denied || gen !== this._gen) return r
      this._denyAll(r)
    }
  }

  /** @param {string[]} ids @param {string} [ticket] none: for a probe, which sends the token in a header */
  _sseUrl(ids, ticket) {
    const key = ids.join(',')
    const q = [`projects=${ids.map(encodeURIComponent).join(',')}`]
    if (ticket) q.push(`ticket=${encodeURIComponent(ticket)}`)
    if (this._cursor && this._cursorKey === key) {
      q.push(`lastEventId=${encodeURIComponent(this._cursor)}`)
    } else {
      this._cursor = ''
      const since = buildSince([...this._projects].map(([id, e]) => [id, e.lastSeq]))
      if (since) q.push(`since=${since}`)
    }
    return `${this._base}/sse?${q.join('&')}`
  }

  /**
   * (Re)opens the event stream for the wanted projects, with a fresh ticket, and waits for it to open.
   * @param {number} gen
   * @param {boolean} connecting true while connecting (checks the server when no project is joined)
   * @returns {Promise<object>} {ok} | {superseded} | {denied, ids, error} | {error, auth?, fatal?}
   */
  async _openStream(gen, connecting) {
    if (gen !== this._gen) return { superseded: true }
    const ids = [...this._projects.keys()]
    this._closeStream()
    const seq = this._streamSeq
    this._streamKey = ids.join(',')
    if (!ids.length) {
      if (!connecting) return { ok: true }
      return this._health().then(() => ({ ok: true }), (error) => ({ error }))
    }
    const t = await this._ticket(this.options.requestTimeout)
    if (gen !== this._gen || seq !== this._streamSeq) return { superseded: true }
    if (!t.ticket) return t
    const url = this._sseUrl(ids, t.ticket)
    return new Promise((resolve) => {
      let es
      try {
        es = new this._EventSource(url)
      } catch (err) {
        resolve({ error: asError(err, 'TRANSPORT_FAILED', 'EventSource failed') })
        return
      }
      this._es = es
      let done = false
      let opened = false
      const finish = (r) => {
        if (done) return
        done = true
        clearTimeout(timer)
        if (this._esCancel === cancel) this._esCancel = null
        resolve(r)
      }
      const cancel = () => finish({ superseded: true })
      this._esCancel = cancel
      const closeOwn = () => {
        if (this._esCancel === cancel) this._esCancel = null // closing our own stream is no supersede
        if (this._es === es) this._closeStream()
      }
      const timer = setTimeout(() => {
        closeOwn()
        finish({ error: { code: 'TRANSPORT_FAILED', message: `event stream did not open within ${this.options.requestTimeout} ms` } })
      }, this.options.requestTimeout)
      const onEvent = (ev) => {
        if (this._es !== es || gen !== this._gen) return
        if (ev.lastEventId) { this._cursor = ev.lastEventId; this._cursorKey = this._streamKey }
        this._onFrame(ev.data, ev.type)
      }
      es.onopen = () => { opened = true; finish({ ok: true }) }
      for (const name of SSE_EVENTS) {
        if (name !== 'error') es.addEventListener(name, onEvent)
      }
      es.addEventListener('message', onEvent)
      es.addEventListener('error', (ev) => {
        if (typeof /** @type {any} */ (ev).data === 'string') return onEvent(ev) // a server `event: error` message
        if (this._es !== es) return
        // EventSource would retry with the same URL, whose ticket is spent: we reconnect
        // ourselves, with a fresh ticket and the cursor.
        closeOwn()
        if (!opened) {
          clearTimeout(timer)
          this._probe(this._sseUrl(ids)).then((p) => finish(p && p.status === 403 && p.error.code === 'PROJECT_ACCESS_DENIED'
            ? { denied: true, ids, error: p.error }
            : this._probeFailure(p, 'event stream could not connect')))
        } else if (gen === this._gen && this._state === 'connected') {
          this._onLost({ error: { code: 'CONNECTION_CLOSED', message: 'event stream closed' } })
        }
      })
    })
  }

  _closeStream() {
    const es = this._es
    this._es = null
    this._streamSeq++
    if (es) es.close()
    if (this._esCancel) this._esCancel()
  }

  /** Re-opens the stream once for all joins and leaves of this tick. */
  _scheduleReopen() {
    if (this._reopenQueued) return
    this._reopenQueued = true
    Promise.resolve().then(async () => {
      this._reopenQueued = false
      if (this._transport !== 'sse' || this._state !== 'connected') return
      const gen = this._gen
      const r = await this._openStream(gen, false)
      if (gen !== this._gen || r.ok || r.superseded) return
      if (r.denied) {
        this._denyAll(r)
        this._scheduleReopen()
        return
      }
      this._onLost(r)
    })
  }

  /** The server refused every listed project (HTTP 403). */
  _denyAll(r) {
    for (const id of r.ids) {
      const err = { ...(r.error || {}), code: 'PROJECT_ACCESS_DENIED', message: (r.error && r.error.message) || `access to project ${id} denied`, projectId: id }
      if (!this._failProject(id, err)) this._emit('error', err)
    }
  }

  // ---------------------------------------------------------------- HTTP helpers

  /** GET /api/websocket/health; resolves on any HTTP answer. */
  async _health() {
    if (!this._fetch) throw { code: 'TRANSPORT_FAILED', message: 'fetch is not available' }
    const ctrl = typeof AbortController === 'function' ? new AbortController() : null
    const timer = setTimeout(() => ctrl && ctrl.abort(), this.options.requestTimeout)
    try {
      const res = await this._fetch(`${this._base}/api/websocket/health`, { cache: 'no-store', signal: ctrl && ctrl.signal })
      return res.status
    } catch (err) {
      throw { code: 'TRANSPORT_FAILED', message: `server not reachable: ${(err && err.message) || err}` }
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Trades the token for a one-time connect ticket: POST /api/tickets, the token in the
   * Authorization header.
   * @param {number} timeout ms
   * @returns {Promise<object>} {ticket} or a failure {error, auth?, fatal?}
   */
  async _ticket(timeout) {
    const a = await this._answer(`${this._base}/api/tickets`, { method: 'POST', headers: { Authorization: `Bearer ${this._token}` } }, timeout, true)
    if (a && a.status === 201 && a.body && typeof a.body.ticket === 'string') return { ticket: a.body.ticket }
    return this._probeFailure(a, 'no connect ticket')
  }

  /**
   * Repeats a failed handshake as a plain GET, the token in a header, to learn its HTTP status
   * and error body.
   * @returns {Promise<{status: number, error?: object}|null>} null when nothing answered
   */
  _probe(url) {
    return this._answer(url, { headers: { Accept: 'application/json', Authorization: `Bearer ${this._token}` } }, this.options.fallbackTimeout)
  }

  /**
   * Fetches url within timeout ms and reads the answer: its status, the error of a status of 400
   * or more, and with readBody the JSON body of any other (a stream is never read).
   * @returns {Promise<{status: number, error?: object, body?: any}|null>} null when nothing answered
   */
  async _answer(url, init, timeout, readBody = false) {
    if (!this._fetch) return null
    const ctrl = typeof AbortController === 'function' ? new AbortController() : null
    const timer = setTimeout(() => ctrl && ctrl.abort(), timeout)
    try {
      const res = await this._fetch(url, { ...init, cache: 'no-store', signal: ctrl && ctrl.signal })
      if (res.status < 400 && !readBody) return { status: res.status }
      let body = null
      try { body = await res.json() } catch { /* not JSON */ }
      if (res.status < 400) return { status: res.status, body }
      const error = body && body.error && typeof body.error === 'object' ? body.error : { code: `HTTP_${res.status}`, message: res.statusText || `HTTP ${res.status}` }
      return { status: res.status, error }
    } catch {
      return null
    } finally {
      clearTimeout(timer)
      if (ctrl) ctrl.abort()
    }
  }

  /** Turns a probe answer into a failure result: 401 is an auth failure, anything else a transport one. */
  _probeFailure(p, message) {
    if (p && p.status === 401) {
      const error = p.error && p.error.code ? p.error : { code: 'UNAUTHORIZED', message: 'token rejected' }
      return { auth: true, fatal: !this.options.getToken, error }
    }
    if (p && p.status === 403) return { fatal: true, error: p.error } // origin refused: retrying cannot help
    return { error: { code: 'TRANSPORT_FAILED', message: p && p.error ? `${message}: ${p.error.message}` : message } }
  }

  // ---------------------------------------------------------------- incoming messages

  /** @param {string} raw one JSON message @param {string} [sseName] the SSE event name */
  _onFrame(raw, sseName) {
    let msg
    try { msg = JSON.parse(raw) } catch { msg = null }
    if (!msg || typeof msg !== 'object' || Array.isArray(msg)) {
      this._emit('error', { code: 'INVALID_SERVER_MESSAGE', message: `unreadable message: ${String(raw).slice(0, 200)}` })
      return
    }
    if (typeof msg.event !== 'string') {
      if (!sseName || sseName === 'message') return
      msg = { event: sseName, data: msg } // tolerate an SSE payload that is only the data
    }
    this._handle(msg)
  }

  /** Routes one server message: request answers, project bookkeeping, dedupe, then handlers. */
  _handle(msg) {
    const { event, data } = msg
    let consumed = false
    if (msg.ack !== undefined && msg.ack !== null) {
      const p = this._pending.get(msg.ack)
      if (p) {
        this._pending.delete(msg.ack)
        clearTimeout(p.timer)
        if (event === 'error') { p.reject(asError(data, 'INTERNAL_ERROR', 'request failed')); consumed = true } else p.resolve(data)
      }
    }
    let resync = null
    let presence = null // the project whose online list this message changed
    if (event === 'joined_project') {
      resync = this._onJoined(data || {})
      presence = this._onPresence(event, (data || {}).projectId, data || {})
    } else if (event === 'user_online' || event === 'user_offline') {
      presence = this._onPresence(event, msg.projectId, data || {})
    } else if (event === 'left_project') this._onLeft(data || {})
    else if (event === 'server_shutdown') this._onShutdown(data || {})
    else if (event === 'error' && !consumed) consumed = this._onServerError(data || {})
    else if (typeof msg.seq === 'number' && msg.projectId !== undefined && !this._acceptSeq(msg)) return
    this._emit('message', msg)
    if (!consumed) this._emit(event, data, msg)
    if (resync) this._emit('resync', resync.projectId, resync)
    if (presence !== null) this._emit('presence', presence, this.presence(presence))
  }

  /** @returns {object|null} the joined data when the project must be reloaded (recovered:false) */
  _onJoined(d) {
    const id = String(d.projectId)
    const entry = this._projects.get(id)
    if (!entry) return null // left (or gave up) meanwhile
    const seq = typeof d.seq === 'number' ? d.seq : 0
    let resync = null
    if (d.recovered === false) {
      entry.lastSeq = seq
      resync = d
    } else if (typeof entry.lastSeq !== 'number') {
      entry.lastSeq = seq // first join: live from here on
    } // recovered: the events after lastSeq follow
    entry.joined = true
    entry.info = d
    this._settleWaiters(entry, d, null)
    return resync
  }

  /**
   * Applies a presence message to a joined project's online list: joined_project replaces it (a
   * join's list is the fresh state, after a reconnect too), user_online and user_offline change one
   * user. A user_online for a user already listed, or a user_offline for one not listed, changes
   * nothing, and neither changes a list that is not known.
   * @returns {string|null} the project id when its list changed
   */
  _onPresence(event, projectId, d) {
    const id = String(projectId)
    const entry = this._projects.get(id)
    if (!entry) return null // not joined (any more): nothing to keep
    const before = entry.online
    let after
    if (event === 'joined_project') {
      after = Array.isArray(d.online) ? d.online.filter((u) => u && u.userId !== undefined).map(onlineUser).sort(byUserId) : null
      if (sameOnline(before, after)) return null
    } else {
      if (!before || d.userId === undefined) return null
      const userId = String(d.userId)
      const listed = before.some((u) => u.userId === userId)
      if (event === 'user_online') {
        if (listed) return null
        after = [...before, onlineUser(d)].sort(byUserId)
      } else {
        if (!listed) return null
        after = before.filter((u) => u.userId !== userId)
      }
    }
    entry.online = after // never changed in place: presence() hands out copies
    return id
  }

  _onLeft(d) {
    if (d.reason === 'requested') return // we removed it when asking (and may have rejoined since)
    const id = String(d.projectId)
    const entry = this._projects.get(id)
    if (!entry) return
    this._projects.delete(id)
    this._settleWaiters(entry, null, { code: 'LEFT_PROJECT', message: `left project ${id}: ${d.reason}`, projectId: id, reason: d.reason })
  }

  _onShutdown(d) {
    const ms = Number(d.reconnectAfterMs)
    // Wait at least what the server asks, plus up to as much again so clients do not return together.
    if (ms > 0) this._shutdownDelay = ms + Math.random() * Math.min(ms, this.options.maxReconnectDelay)
  }

  /** @returns {boolean} true when the error answered a pending join (so it is not emitted) */
  _onServerError(d) {
    if (d.code === 'PROJECT_ACCESS_DENIED' && d.projectId !== undefined) return this._failProject(String(d.projectId), d)
    return false
  }

  /** Exactly once, in order: drops a domain event already seen or of a project not joined. */
  _acceptSeq(msg) {
    const entry = this._projects.get(String(msg.projectId))
    if (!entry) return false
    if (typeof entry.lastSeq === 'number' && msg.seq <= entry.lastSeq) return false
    entry.lastSeq = msg.seq
    return true
  }

  /**
   * Drops a wanted project after the server refused it.
   * @returns {boolean} true when a joinProject() call was waiting (and now rejects)
   */
  _failProject(id, err) {
    const entry = this._projects.get(id)
    if (!entry) return false
    this._projects.delete(id)
    const waited = entry.waiters.length > 0
    this._settleWaiters(entry, null, err)
    return waited
  }

  _settleWaiters(entry, value, err) {
    const waiters = entry.waiters
    entry.waiters = []
    for (const w of waiters) {
      clearTimeout(w.timer)
      err ? w.reject(err) : w.resolve(value)
    }
  }

  _emit(event, ...args) {
    const set = this._handlers.get(event)
    if (!set) return
    for (const fn of [...set]) {
      try { fn(...args) } catch (err) { report(err) }
    }
  }
}

export default SagaClient
