//! The simulator's Zoom accounts and what they hold. The primary account is
//! seeded: users, past meetings (one with a UUID that begins with `/`, one
//! that contains `//`), their participants (enough for several pages) and
//! cloud recordings whose download URLs point back at the simulator. Other
//! accounts start with their owner only. Tests add meetings (ended, with a
//! recording still processing or completed) and users as they need them,
//! with [`NewMeeting`] and [`NewUser`].
//!
//! The seed is deterministic, so tests can name what they expect through the
//! constants below. Objects are kept as JSON in Zoom's shapes; the REST
//! handlers page through them and edit them.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::SimConfig;

/// The account owner, host of most meetings.
pub const HOST_USER_ID: &str = "hU7x2QeLSmOa3kP9rT1bYw";
pub const HOST_EMAIL: &str = "host@example.com";
/// A second licensed user.
pub const ALICE_USER_ID: &str = "kX9pL3mN5qR7sT1vW3yZ5a";
pub const ALICE_EMAIL: &str = "alice@example.com";
/// The meeting of the sample events in `examples/events`, with a recording.
pub const WEEKLY_SYNC_ID: u64 = 85512345678;
pub const WEEKLY_SYNC_UUID: &str = "pE3zGv9tRkyZ1mWqf0b2Kw==";
/// A meeting whose UUID begins with `/`: found only when double-encoded.
pub const SLASH_MEETING_ID: u64 = 85587654321;
pub const SLASH_UUID: &str = "/aB3dE5gH7jK9mN1pQ3sT5v==";
/// A meeting whose UUID contains `//`: found only when double-encoded.
pub const DOUBLE_SLASH_MEETING_ID: u64 = 85511122233;
pub const DOUBLE_SLASH_UUID: &str = "Zx8//yW6vU4tS2rQ0pO8nM==";
/// A meeting without a cloud recording.
pub const NO_RECORDING_MEETING_ID: u64 = 85544455566;

/// One meeting and everything hanging off it.
#[derive(Debug, Clone)]
pub(crate) struct Meeting {
    pub id: u64,
    pub uuid: String,
    pub host_id: String,
    pub start: DateTime<Utc>,
    /// When it ended (every meeting here is a past one).
    pub end: DateTime<Utc>,
    /// What `GET /meetings/{id}` answers.
    pub object: Value,
    pub participants: Vec<Value>,
    /// What `GET /meetings/{id}/recordings` answers, with `recording_files`.
    pub recording: Option<Value>,
    pub deleted: bool,
}

/// One account's data, mutable through PATCH and DELETE.
#[derive(Debug, Clone)]
pub(crate) struct SimData {
    pub account_id: String,
    pub users: Vec<Value>,
    pub meetings: Vec<Meeting>,
}

/// A meeting a test adds: it has ended; it may have a cloud recording.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NewMeeting {
    pub topic: String,
    /// A user of the account; its owner when `None`.
    #[serde(default)]
    pub host_id: Option<String>,
    pub start: DateTime<Utc>,
    pub minutes: i64,
    /// Participants the reports list (Zoom's report lists meetings with 2 or more).
    #[serde(default)]
    pub participants: usize,
    #[serde(default)]
    pub recording: Option<RecordingState>,
}

impl NewMeeting {
    /// A 30-minute meeting of three that ended a minute ago, without a recording.
    pub fn ended_now(topic: &str) -> NewMeeting {
        NewMeeting {
            topic: topic.into(),
            host_id: None,
            start: Utc::now() - Duration::minutes(31),
            minutes: 30,
            participants: 3,
            recording: None,
        }
    }

    pub fn with_recording(mut self, state: RecordingState) -> NewMeeting {
        self.recording = Some(state);
        self
    }
}

/// Where a cloud recording is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Its files are still being processed (`status: processing`).
    Processing,
    Completed,
}

/// A user a test adds, created now.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NewUser {
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// `active`, `pending` or `inactive`.
    #[serde(default = "active")]
    pub status: String,
}

fn active() -> String {
    "active".into()
}

fn user(id: &str, email: &str, first: &str, last: &str, role: &str) -> Value {
    json!({
        "id": id,
        "email": email,
        "first_name": first,
        "last_name": last,
        "display_name": format!("{first} {last}"),
        "type": 2,
        "role_name": role,
        "status": "active",
        "timezone": "Europe/Berlin",
        "language": "en-US",
        "dept": "",
        "pmi": 5551234567u64,
        "verified": 1,
        "created_at": "2023-01-10T09:00:00Z",
    })
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// First and last names of seeded participants: every combination is
/// distinct for the first `FIRST_NAMES.len() * LAST_NAMES.len()` (672).
const FIRST_NAMES: [&str; 24] = [
    "Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Donald", "Hedy", "Ken", "Radia",
    "Dennis", "Karen", "John", "Margaret", "Niklaus", "Shafi", "Tim", "Lynn", "Linus", "Sophie",
    "Guido", "Annie", "Bjarne", "Jean",
];
const LAST_NAMES: [&str; 28] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Liskov",
    "Dijkstra",
    "Allen",
    "Knuth",
    "Lamarr",
    "Thompson",
    "Perlman",
    "Ritchie",
    "Jones",
    "McCarthy",
    "Hamilton",
    "Wirth",
    "Goldwasser",
    "Berners",
    "Conway",
    "Torvalds",
    "Wilson",
    "Rossum",
    "Easley",
    "Stroustrup",
    "Sammet",
    "Backus",
    "Kay",
    "Cerf",
    "Hoare",
];

/// The seeded name of participant `i` (0-based) of a meeting. For each
/// first name the last name shifts by one per round, so names stay distinct.
fn participant_name(i: usize) -> String {
    let round = i / FIRST_NAMES.len();
    let first = i % FIRST_NAMES.len();
    let last = (first + round) % LAST_NAMES.len();
    format!("{} {}", FIRST_NAMES[first], LAST_NAMES[last])
}

/// Participants of a meeting of `minutes`: each joins within its first five
/// minutes and stays between half of it and all of it.
fn participants(count: usize, start: DateTime<Utc>, minutes: i64, seed: u64) -> Vec<Value> {
    let meeting_secs = (minutes * 60).max(120);
    (0..count)
        .map(|i| {
            let n = i + 1;
            let join = start + Duration::seconds(i as i64 % 300);
            let stay = meeting_secs - (i as i64 * 397) % (meeting_secs / 2);
            let name = participant_name(i);
            let email = format!("{}.{n}@example.com", name.replace(' ', ".").to_lowercase());
            json!({
                "id": format!("pt{seed:x}{n:05}"),
                "user_id": format!("{}", 16_778_240 + n),
                "name": name,
                "user_email": email,
                "join_time": iso(join),
                "leave_time": iso(join + Duration::seconds(stay)),
                "duration": stay,
                "failover": false,
                "status": "in_meeting",
                "registrant_id": "",
            })
        })
        .collect()
}

struct MeetingSeed {
    id: u64,
    uuid: &'static str,
    host_id: &'static str,
    host_email: &'static str,
    topic: &'static str,
    start: &'static str,
    duration: i64,
    recorded: bool,
}

const SEEDS: [MeetingSeed; 4] = [
    MeetingSeed {
        id: WEEKLY_SYNC_ID,
        uuid: WEEKLY_SYNC_UUID,
        host_id: HOST_USER_ID,
        host_email: HOST_EMAIL,
        topic: "Weekly Sync",
        start: "2024-11-19T07:06:40Z",
        duration: 60,
        recorded: true,
    },
    MeetingSeed {
        id: SLASH_MEETING_ID,
        uuid: SLASH_UUID,
        host_id: HOST_USER_ID,
        host_email: HOST_EMAIL,
        topic: "Board Review",
        start: "2024-11-18T13:00:00Z",
        duration: 90,
        recorded: true,
    },
    MeetingSeed {
        id: DOUBLE_SLASH_MEETING_ID,
        uuid: DOUBLE_SLASH_UUID,
        host_id: ALICE_USER_ID,
        host_email: ALICE_EMAIL,
        topic: "Design Crit",
        start: "2024-11-15T10:30:00Z",
        duration: 45,
        recorded: true,
    },
    MeetingSeed {
        id: NO_RECORDING_MEETING_ID,
        uuid: "Qw1eR3tY5uI7oP9aS1dF3g==",
        host_id: ALICE_USER_ID,
        host_email: ALICE_EMAIL,
        topic: "Alice and Bob 1:1",
        start: "2024-11-14T16:00:00Z",
        duration: 30,
        recorded: false,
    },
];

fn recording_file(
    seed: &MeetingSeed,
    kind: &str,
    size: u64,
    start: DateTime<Utc>,
    base_url: &str,
) -> Value {
    let file_id = format!("rec-{}-{}", seed.id, kind.to_ascii_lowercase());
    let end = start + Duration::minutes(seed.duration);
    json!({
        "id": file_id,
        "meeting_id": seed.uuid,
        "recording_start": iso(start),
        "recording_end": iso(end),
        "file_type": kind,
        "file_extension": kind,
        "file_size": size,
        "play_url": format!("{base_url}/rec/play/{file_id}"),
        "download_url": format!("{base_url}/rec/download/{file_id}"),
        "status": "completed",
        "recording_type": if kind == "MP4" { "shared_screen_with_speaker_view" } else { "audio_only" },
    })
}

/// A meeting's passcode: six digits derived from its id.
fn passcode(id: u64) -> String {
    format!("{:06}", id.wrapping_mul(2_654_435_761) % 1_000_000)
}

/// The join link, with the encoded passcode Zoom puts in `pwd`.
fn join_url(base_url: &str, id: u64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{id}:{}", passcode(id)).as_bytes());
    format!("{base_url}/j/{id}?pwd={}", hex::encode(&digest[..12]))
}

fn seed_meeting(seed: &MeetingSeed, config: &SimConfig, base_url: &str, index: u64) -> Meeting {
    // Cannot fail: the seed times are literals in RFC 3339.
    let start = DateTime::parse_from_rfc3339(seed.start)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default();
    let end = start + Duration::minutes(seed.duration);
    let object = json!({
        "uuid": seed.uuid,
        "id": seed.id,
        "host_id": seed.host_id,
        "host_email": seed.host_email,
        "assistant_id": "",
        "topic": seed.topic,
        "type": 2,
        "status": "waiting",
        "start_time": iso(start),
        "duration": seed.duration,
        "timezone": "Europe/Berlin",
        "agenda": "",
        "created_at": iso(start - Duration::days(3)),
        "join_url": join_url(base_url, seed.id),
        "password": passcode(seed.id),
        "settings": {
            "host_video": true,
            "participant_video": false,
            "join_before_host": false,
            "mute_upon_entry": true,
            "waiting_room": true,
            "auto_recording": "cloud",
        },
    });
    let recording = seed.recorded.then(|| {
        let mp4 = config.recording_file_size;
        let m4a = (mp4 / 8).max(1);
        let files = vec![
            recording_file(seed, "MP4", mp4, start, base_url),
            recording_file(seed, "M4A", m4a, start, base_url),
        ];
        json!({
            "uuid": seed.uuid,
            "id": seed.id,
            "account_id": config.account_id,
            "host_id": seed.host_id,
            "topic": seed.topic,
            "type": 2,
            "start_time": iso(start),
            "timezone": "Europe/Berlin",
            "duration": seed.duration,
            "total_size": mp4 + m4a,
            "recording_count": 2,
            "share_url": format!("{base_url}/rec/share/{}", seed.id),
            "recording_play_passcode": "sim-passcode",
            "recording_files": files,
        })
    });
    Meeting {
        id: seed.id,
        uuid: seed.uuid.to_string(),
        host_id: seed.host_id.to_string(),
        start,
        end,
        object,
        participants: participants(config.participants_per_meeting, start, seed.duration, index),
        recording,
        deleted: false,
    }
}

impl SimData {
    pub fn seed(config: &SimConfig, base_url: &str) -> SimData {
        SimData {
            account_id: config.account_id.clone(),
            users: vec![
                user(HOST_USER_ID, HOST_EMAIL, "Hana", "Host", "Owner"),
                user(ALICE_USER_ID, ALICE_EMAIL, "Alice", "Admin", "Admin"),
                user(
                    "bT5nV7cX9zL1kJ3hG5fD7s",
                    "bob@example.com",
                    "Bob",
                    "Member",
                    "Member",
                ),
            ],
            meetings: SEEDS
                .iter()
                .enumerate()
                .map(|(i, seed)| seed_meeting(seed, config, base_url, i as u64 + 1))
                .collect(),
        }
    }

    /// Another account: its owner and nothing else.
    pub fn empty(account_id: &str) -> SimData {
        let owner_id = owner_id(account_id);
        let email = format!("owner@{}.example", account_id.to_ascii_lowercase());
        SimData {
            account_id: account_id.to_string(),
            users: vec![user(&owner_id, &email, "Olga", "Owner", "Owner")],
            meetings: Vec::new(),
        }
    }

    /// The account owner's id (the host of added meetings by default).
    pub fn owner_id(&self) -> String {
        self.users
            .first()
            .and_then(|u| u["id"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// Adds an ended meeting (and its recording) and returns its uuid; its
    /// recording files become downloadable through `downloads`.
    pub fn add_meeting(
        &mut self,
        spec: &NewMeeting,
        base_url: &str,
        file_size: u64,
        downloads: &mut HashMap<String, u64>,
    ) -> Option<String> {
        let host_id = spec.host_id.clone().unwrap_or_else(|| self.owner_id());
        let host = self.user(&host_id)?.clone();
        let id = 86_000_000_000 + fastrand::u64(..1_000_000_000);
        let uuid = random_uuid();
        let end = spec.start + Duration::minutes(spec.minutes);
        let object = json!({
            "uuid": uuid,
            "id": id,
            "host_id": host_id,
            "host_email": host["email"],
            "topic": spec.topic,
            "type": 2,
            "status": "finished",
            "start_time": iso(spec.start),
            "duration": spec.minutes,
            "timezone": "Europe/Berlin",
            "created_at": iso(spec.start - Duration::hours(1)),
            "join_url": join_url(base_url, id),
            "password": passcode(id),
        });
        let recording = spec.recording.map(|state| {
            let files: Vec<Value> = ["MP4", "M4A"]
                .iter()
                .map(|kind| {
                    let file_id = format!("rec-{id}-{}", kind.to_ascii_lowercase());
                    let size = if *kind == "MP4" { file_size } else { (file_size / 8).max(1) };
                    downloads.insert(file_id.clone(), size);
                    json!({
                        "id": file_id,
                        "meeting_id": uuid,
                        "recording_start": iso(spec.start),
                        "recording_end": iso(end),
                        "file_type": kind,
                        "file_extension": kind,
                        "file_size": size,
                        "play_url": format!("{base_url}/rec/play/{file_id}"),
                        "download_url": format!("{base_url}/rec/download/{file_id}"),
                        "status": if state == RecordingState::Completed { "completed" } else { "processing" },
                        "recording_type": if *kind == "MP4" { "shared_screen_with_speaker_view" } else { "audio_only" },
                    })
                })
                .collect();
            let total: u64 = files.iter().filter_map(|f| f["file_size"].as_u64()).sum();
            json!({
                "uuid": uuid,
                "id": id,
                "account_id": self.account_id,
                "host_id": host_id,
                "topic": spec.topic,
                "type": 2,
                "start_time": iso(spec.start),
                "timezone": "Europe/Berlin",
                "duration": spec.minutes,
                "total_size": total,
                "recording_count": files.len(),
                "share_url": format!("{base_url}/rec/share/{id}"),
                "recording_play_passcode": "sim-passcode",
                "recording_files": files,
            })
        });
        self.meetings.push(Meeting {
            id,
            uuid: uuid.clone(),
            host_id,
            start: spec.start,
            end,
            object,
            participants: participants(spec.participants, spec.start, spec.minutes, id),
            recording,
            deleted: false,
        });
        Some(uuid)
    }

    /// Marks every file of a meeting's recording completed; false when it has none.
    pub fn complete_recording(&mut self, uuid: &str) -> bool {
        let Some(files) = self
            .meetings
            .iter_mut()
            .find(|m| m.uuid == uuid)
            .and_then(|m| m.recording.as_mut())
            .and_then(|r| r["recording_files"].as_array_mut())
        else {
            return false;
        };
        for file in files {
            file["status"] = json!("completed");
        }
        true
    }

    /// Adds a user created now; returns it.
    pub fn add_user(&mut self, spec: &NewUser) -> Value {
        let id = random_uuid().trim_end_matches('=').replace(['/', '+'], "x");
        let mut user = user(
            &id,
            &spec.email,
            &spec.first_name,
            &spec.last_name,
            "Member",
        );
        user["status"] = json!(spec.status);
        user["created_at"] = json!(iso(Utc::now()));
        self.users.push(user.clone());
        user
    }

    /// File id -> size of every seeded recording file.
    pub fn download_sizes(&self) -> HashMap<String, u64> {
        self.meetings
            .iter()
            .filter_map(|m| m.recording.as_ref())
            .filter_map(|r| r["recording_files"].as_array())
            .flatten()
            .filter_map(|f| Some((f["id"].as_str()?.to_string(), f["file_size"].as_u64()?)))
            .collect()
    }

    /// A user by id, by email, or `me` (the account owner).
    pub fn user(&self, user_id: &str) -> Option<&Value> {
        if user_id == "me" {
            return self.users.first();
        }
        self.users.iter().find(|u| {
            u["id"] == user_id
                || u["email"]
                    .as_str()
                    .is_some_and(|e| e.eq_ignore_ascii_case(user_id))
        })
    }

    /// A seeded meeting by numeric id, deleted or not.
    pub fn meeting(&self, id: u64) -> Option<&Meeting> {
        self.meetings.iter().find(|m| m.id == id)
    }

    /// A live meeting by numeric id or (decoded) UUID.
    pub fn meeting_mut(&mut self, id_or_uuid: &str) -> Option<&mut Meeting> {
        let numeric = id_or_uuid.parse::<u64>().ok();
        self.meetings
            .iter_mut()
            .filter(|m| !m.deleted)
            .find(|m| Some(m.id) == numeric || m.uuid == id_or_uuid)
    }

    pub fn recording_completed_event(
        &self,
        meeting_id: u64,
        download_token: &str,
    ) -> Option<Value> {
        let uuid = &self.meetings.iter().find(|m| m.id == meeting_id)?.uuid;
        self.recording_event(uuid, download_token)
    }

    /// The `recording.completed` event of a meeting's recording, as Zoom
    /// would deliver it now.
    pub fn recording_event(&self, uuid: &str, download_token: &str) -> Option<Value> {
        let meeting = self.meetings.iter().find(|m| m.uuid == uuid)?;
        let mut object = meeting.recording.clone()?;
        object["host_email"] = meeting.object["host_email"].clone();
        Some(json!({
            "event": "recording.completed",
            "event_ts": Utc::now().timestamp_millis(),
            "download_token": download_token,
            "payload": { "account_id": self.account_id, "object": object },
        }))
    }
}

/// The id of another account's owner.
pub fn owner_id(account_id: &str) -> String {
    format!("owner-{account_id}")
}

/// A meeting uuid as Zoom makes them: 22 base64 characters and `==`.
fn random_uuid() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut uuid: String = (0..22)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    uuid.push_str("==");
    uuid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_has_the_awkward_uuids_and_downloadable_files() {
        let data = SimData::seed(&SimConfig::default(), "http://127.0.0.1:1");
        let uuids: Vec<_> = data.meetings.iter().map(|m| m.uuid.as_str()).collect();
        assert!(uuids.iter().any(|u| u.starts_with('/')));
        assert!(uuids.iter().any(|u| u.contains("//")));
        let sizes = data.download_sizes();
        assert_eq!(sizes.get("rec-85512345678-mp4"), Some(&(8 * 1024 * 1024)));
        assert_eq!(data.meetings[0].participants.len(), 650);
        let names: std::collections::HashSet<_> = data.meetings[0]
            .participants
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names.len(),
            650,
            "every seeded participant has a distinct name"
        );
        assert_eq!(data.meetings[0].participants[0]["name"], "Ada Lovelace");
        assert_eq!(data.meetings[0].participants[1]["name"], "Grace Hopper");
    }

    #[test]
    fn recording_event_points_at_the_simulator() {
        let data = SimData::seed(&SimConfig::default(), "http://127.0.0.1:1");
        let event = data
            .recording_completed_event(WEEKLY_SYNC_ID, "dl")
            .unwrap();
        assert_eq!(event["download_token"], "dl");
        let url = event["payload"]["object"]["recording_files"][0]["download_url"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("http://127.0.0.1:1/rec/download/"));
        assert!(
            data.recording_completed_event(NO_RECORDING_MEETING_ID, "dl")
                .is_none()
        );
    }
}
