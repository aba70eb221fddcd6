// A Zoom WebSocket client written by hand, as an integrator would from
// Zoom's samples: a Server-to-Server OAuth token, the event subscription's
// WebSocket with Zoom's heartbeat, and the 20 rules of `zoomwire bench`
// (crates/zoomwire-sim/src/bench/workload.rs) translated to JavaScript,
// posting to Slack with Node's http client and a keep-alive agent.
//
// It keeps nothing on disk: an event is lost if the process dies before its
// posts are sent (zoomwire's durable journal exists to prevent exactly that).
// `zoomwire bench --journal node` runs it against the simulator and compares.
//
// Settings come from the environment, as zoomwire's do: ZOOM_ACCOUNT_ID,
// ZOOM_CLIENT_ID, ZOOM_CLIENT_SECRET, ZOOM_SUBSCRIPTION_ID, ZOOM_OAUTH_BASE,
// ZOOM_WS_BASE, SLACK_BOT_TOKEN, SLACK_API_BASE; ZOOMWIRE_ADMIN_ADDR
// (host:port) is where it serves the two counters the bench reads, under
// zoomwire's names: `zoomwire_events_total` and `zoomwire_runs_total`.

'use strict';

const http = require('node:http');
const https = require('node:https');
const WebSocket = require('ws');

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`missing setting ${name}`);
    process.exit(2);
  }
  return value;
};

const config = {
  accountId: env('ZOOM_ACCOUNT_ID'),
  clientId: env('ZOOM_CLIENT_ID'),
  clientSecret: env('ZOOM_CLIENT_SECRET'),
  subscriptionId: env('ZOOM_SUBSCRIPTION_ID'),
  oauthBase: env('ZOOM_OAUTH_BASE'),
  wsBase: env('ZOOM_WS_BASE'),
  slackToken: env('SLACK_BOT_TOKEN'),
  slackApiBase: env('SLACK_API_BASE'),
  adminAddr: process.env.ZOOMWIRE_ADMIN_ADDR || '127.0.0.1:9464',
  verbose: process.env.LOG_LEVEL === 'info',
};

const HEARTBEAT_MS = 30_000;
const RECONNECT_MS = 1_000;
const CHANNEL = '#alerts';

const counters = { events: 0, succeeded: 0, failed: 0 };

// Server-to-Server OAuth: client credentials in Basic auth, the account in the form body.
async function getAccessToken() {
  const basic = Buffer.from(`${config.clientId}:${config.clientSecret}`).toString('base64');
  const response = await fetch(`${config.oauthBase}/oauth/token`, {
    method: 'POST',
    headers: {
      Authorization: `Basic ${basic}`,
      'Content-Type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'account_credentials', account_id: config.accountId }),
  });
  const body = await response.json();
  if (!response.ok || !body.access_token) {
    throw new Error(`token request failed: ${response.status} ${body.reason || body.error || ''}`);
  }
  return body.access_token;
}

// Slack's chat.postMessage over Node's own http(s) client with a keep-alive
// agent, as axios and most hand-written clients send it. (Node's `fetch`
// costs more than twice the CPU per post on this workload.)
const slackUrl = new URL(`${config.slackApiBase}/chat.postMessage`);
const transport = slackUrl.protocol === 'https:' ? https : http;
const slackAgent = new transport.Agent({ keepAlive: true, maxSockets: 64 });

function slackPost(channel, text) {
  const body = JSON.stringify({ channel, text });
  const options = {
    method: 'POST',
    agent: slackAgent,
    headers: {
      Authorization: `Bearer ${config.slackToken}`,
      'Content-Type': 'application/json; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
    },
  };
  return new Promise((resolve, reject) => {
    const request = transport.request(slackUrl, options, (response) => {
      const chunks = [];
      response.on('data', (chunk) => chunks.push(chunk));
      response.on('end', () => {
        try {
          const answer = JSON.parse(Buffer.concat(chunks).toString());
          if (answer.ok) {
            resolve();
          } else {
            reject(new Error(`slack: ${answer.error}`));
          }
        } catch (error) {
          reject(new Error(`slack: ${response.statusCode}: ${error.message}`));
        }
      });
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

function log(message) {
  if (config.verbose) {
    console.log(message);
  }
}

// The bench's rules: name, trigger, condition, and whether the rule posts.
const rules = [
  {
    name: 'outside-participant-joined',
    on: 'meeting.participant_joined',
    when: (o) => String(o.participant.email).toLowerCase().endsWith('@rival.example'),
    posts: true,
  },
  {
    name: 'late-night-join',
    on: 'meeting.participant_joined',
    when: (o) => String(o.participant.join_time).substr(11, 2) >= '22',
    posts: true,
  },
  {
    name: 'host-left',
    on: 'meeting.participant_left',
    when: (o) => o.participant.id === o.host_id,
    posts: true,
  },
  {
    name: 'removed-by-host',
    on: 'meeting.participant_left',
    when: (o) => String(o.participant.leave_reason).includes('removed by the host'),
    posts: true,
  },
  {
    name: 'board-meeting-started',
    on: 'meeting.started',
    when: (o) => String(o.topic).includes('Board'),
    posts: true,
  },
  {
    name: 'long-meeting-ended',
    on: 'meeting.ended',
    when: (o) => o.duration > 240 && !String(o.topic).includes('Workshop'),
    posts: true,
  },
  { name: 'recording-to-slack', on: 'recording.completed', when: () => true, posts: true },
  {
    name: 'chat-saved',
    on: 'recording.completed',
    when: (o) => o.recording_files?.[2]?.file_type === 'CHAT',
    posts: true,
  },
  {
    name: 'contractor-created',
    on: 'user.created',
    when: (o) => ['contractor.example', 'agency.example'].includes(String(o.email).split('@')[1]),
    posts: true,
  },
  {
    name: 'webinar-or-open-meeting',
    on: 'meeting.created',
    when: (o) => [5, 9].includes(o.type) || !o.settings?.waiting_room,
    posts: true,
  },
  {
    name: 'ceo-joined',
    on: 'meeting.participant_joined',
    when: (o) => o.participant.user_name === 'The CEO',
    posts: false,
  },
  {
    name: 'dial-in-joined',
    on: 'meeting.participant_joined',
    when: (o) => o.participant.phone_number !== '',
    posts: false,
  },
  {
    name: 'connection-lost',
    on: 'meeting.participant_left',
    when: (o) => String(o.participant.leave_reason).toLowerCase() === 'connection lost',
    posts: false,
  },
  { name: 'webinar-started', on: 'meeting.started', when: (o) => o.type === 5, posts: false },
  {
    name: 'hostless-meeting-started',
    on: 'meeting.started',
    when: (o) => o.host_id === '',
    posts: false,
  },
  { name: 'empty-meeting-ended', on: 'meeting.ended', when: (o) => o.duration === 0, posts: false },
  {
    name: 'many-files-recording',
    on: 'recording.completed',
    when: (o) => o.recording_count > 20,
    posts: false,
  },
  { name: 'guest-account-created', on: 'user.created', when: (o) => o.type === 99, posts: false },
  {
    name: 'pmi-meeting-created',
    on: 'meeting.created',
    when: (o) => Boolean(o.settings?.use_pmi),
    posts: false,
  },
  {
    name: 'test-meeting',
    on: 'meeting.*',
    when: (o) => String(o.topic).toLowerCase().startsWith('zoomwire bench never'),
    posts: false,
  },
];

function triggers(on, kind) {
  return on.endsWith('.*') ? kind.startsWith(on.slice(0, -1)) : on === kind;
}

function handleEvent(event) {
  const object = event.payload?.object ?? {};
  for (const rule of rules) {
    if (!triggers(rule.on, event.event) || !rule.when(object)) {
      continue;
    }
    if (!rule.posts) {
      log(`${rule.name} matched`);
      counters.succeeded += 1;
      continue;
    }
    const text = `t=${event.payload.bench_sent_us} n=${event.event_ts} ${rule.name}`;
    slackPost(CHANNEL, text).then(
      () => {
        counters.succeeded += 1;
      },
      (error) => {
        counters.failed += 1;
        console.error(`${rule.name}: ${error.message}`);
      },
    );
  }
  counters.events += 1;
}

function onFrame(data) {
  const frame = JSON.parse(data.toString());
  switch (frame.module) {
    case 'build_connection':
      if (!frame.success) {
        console.error(`subscription refused: ${frame.content}`);
      }
      break;
    case 'heartbeat':
      if (frame.success === false) {
        console.error('heartbeat failed');
      }
      break;
    case 'message': {
      const event = typeof frame.content === 'string' ? JSON.parse(frame.content) : frame.content;
      handleEvent(event);
      break;
    }
    default:
      log(`ignored a ${frame.module} frame`);
  }
}

async function connect() {
  const token = await getAccessToken();
  const url = `${config.wsBase}?subscriptionId=${config.subscriptionId}&access_token=${token}`;
  const ws = new WebSocket(url);
  let heartbeat;
  ws.on('open', () => {
    log('connected');
    heartbeat = setInterval(() => ws.send(JSON.stringify({ module: 'heartbeat' })), HEARTBEAT_MS);
  });
  ws.on('message', (data) => {
    try {
      onFrame(data);
    } catch (error) {
      console.error(`bad frame: ${error.message}`);
    }
  });
  ws.on('error', (error) => console.error(`websocket: ${error.message}`));
  ws.on('close', (code) => {
    clearInterval(heartbeat);
    console.error(`websocket closed (${code}); reconnecting`);
    setTimeout(start, RECONNECT_MS);
  });
}

function start() {
  connect().catch((error) => {
    console.error(error.message);
    setTimeout(start, RECONNECT_MS);
  });
}

// The counters the bench reads, in Prometheus' text format.
function serveCounters() {
  const [host, port] = config.adminAddr.split(':');
  const server = http.createServer((request, response) => {
    response.setHeader('Content-Type', 'text/plain; version=0.0.4');
    response.end(
      `zoomwire_events_total ${counters.events}\n` +
        `zoomwire_runs_total{outcome="succeeded"} ${counters.succeeded}\n` +
        `zoomwire_runs_total{outcome="failed"} ${counters.failed}\n`,
    );
  });
  server.listen(Number(port), host);
}

serveCounters();
start();
