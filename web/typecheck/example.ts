// An application of the browser client as a team would write one, checked
// with strict TypeScript against client.d.ts (make typecheck): the types
// must let this compile, and must say what the server really sends
// (nullable fields included), so the program handles null.
import SagaClient, { type JoinedProject, type OnlineUser, type SagaError, type SagaEventData, backoffDelay, buildSince } from '../client.js'

async function fetchToken(): Promise<string> {
  const r = await fetch('/token')
  return r.text()
}

const client = new SagaClient({ url: 'https://push.example.com', getToken: fetchToken, transports: ['websocket', 'sse'] })

function render(projectId: string, online: OnlineUser[] | null): string {
  if (online === null) return `${projectId}: who is online is not known`
  return online.map((u) => u.userName ?? u.userId).join(', ')
}

async function main(): Promise<void> {
  client.on('state', (s) => console.log('state', s))
  await client.connect()
  const joined: JoinedProject = await client.joinProject('p1')
  console.log(joined.seq, joined.recovered === true, render('p1', joined.online ?? null))
  client.on('presence', (projectId, online) => console.log(render(projectId, online)))
  const now: OnlineUser[] | null = client.presence('p1')
  console.log(now?.length ?? 0)

  client.onStoryUploaded((data, message) => {
    const at: number = data.story.createdAt
    const audio: string = data.story.audioUrl ?? '(no audio yet)'
    console.log(message.seq, message.projectId, new Date(at).toISOString(), audio)
  })
  client.onInteractionAdded((data) => {
    const answered: number | null = data.interaction.answeredAt
    console.log(data.storyId, data.interaction.content, answered === null ? 'open' : new Date(answered))
  })
  client.onTranscriptUpdated((data) => console.log(data.transcript?.length ?? 0))
  client.onExportReady((data) => {
    const until = data.expiresAt === null ? 'no expiry' : new Date(data.expiresAt).toISOString()
    console.log(data.downloadUrl ?? 'no link yet', until)
  })
  client.on('export_failed', (data) => console.log(data.error ?? 'unknown error'))
  client.on('user_offline', (data) => console.log(data.userId))
  client.onTyping((t) => console.log(t.projectId, t.storyId, t.userName ?? t.userId, t.typing))
  client.on('resync', (projectId, j) => console.log('reload', projectId, j.seq))
  client.on('error', (e: SagaError) => console.log(e.code, e.message))
  console.log(client.transport, client.state, client.projects, client.lastSeq('p1'))
  console.log(await client.ping(), client.sendTyping('p1', 's1', true))
  console.log(backoffDelay(3, 1000, 30000), buildSince([['p1', 17]]))
  await client.leaveProject('p1')
  client.disconnect()
}

main().catch((e: unknown) => console.error(e))

// The exact types of the fields the server may send as null or as numbers
// (docs/protocol.md section 6): each line fails to compile when client.d.ts
// says otherwise.
type Exactly<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false
type Data = SagaEventData
export const exact: true[] = [
  true satisfies Exactly<Data['story_uploaded']['story']['createdAt'], number>,
  true satisfies Exactly<Data['story_uploaded']['story']['audioUrl'], string | null>,
  true satisfies Exactly<Data['interaction_added']['interaction']['answeredAt'], number | null>,
  true satisfies Exactly<Data['interaction_added']['interaction']['createdAt'], number>,
  true satisfies Exactly<Data['interaction_added']['interaction']['facilitatorId'], string | null>,
  true satisfies Exactly<Data['transcript_updated']['transcript'], string | null>,
  true satisfies Exactly<Data['export_ready']['downloadUrl'], string | null>,
  true satisfies Exactly<Data['export_ready']['expiresAt'], number | null>,
  true satisfies Exactly<Data['export_failed']['error'], string | null>,
  true satisfies Exactly<Data['user_online']['userName'], string | null>,
  true satisfies Exactly<Data['typing_start']['userName'], string | null>,
  true satisfies Exactly<Data['pong']['ts'], number>,
]
