//! What `zoomwire bench` feeds the daemon: 20 rules with conditions on
//! payload fields, and a stream of Zoom events of a realistic mix in which
//! about 8% match one Slack-posting rule each.
//!
//! Seven rules post to Slack, one per event type, each when a field says
//! so (an outside participant joined, one was removed, a meeting about an
//! incident started, ...). The other thirteen are filters an account might
//! also have, whose conditions the generated events never meet: they cost
//! matching, not runs. So every event is journaled and matched against the
//! rules of its type, and the posting events run one script each: the
//! number of Slack posts to expect is known when the events are made.
//!
//! Every event carries `payload.bench_sent_us`, the time it was sent in
//! microseconds since the Unix epoch, and the posting rules put it in the
//! message (`t=...`), so the latency from frame sent to post received can be
//! read off the simulator's Slack posts.

use serde_json::{Value, json};

/// The Slack channel the posting rules use (one the simulator knows).
pub const CHANNEL: &str = "#alerts";
/// Share of events that produce a Slack post.
pub const POST_SHARE: f64 = 0.08;
/// Stands for the send time until the frame is sent (16 digits, as a real one).
pub const SENT_PLACEHOLDER: &str = "1111111111111111";

/// The 20 rules, as one YAML file holding a list.
pub fn rules_yaml() -> String {
    let mut yaml = String::from("# zoomwire bench: 7 posting rules and 13 filters\n");
    for (name, on, when, post) in RULES {
        let action = if post {
            format!(
                "slack::post(\"{CHANNEL}\", `t=${{event.payload.bench_sent_us}} {name}: ${{event.event}} ${{event.payload.object.id}}`);"
            )
        } else {
            format!("log::info(\"{name} matched\");")
        };
        yaml.push_str(&format!(
            "- name: {name}\n  on: {on}\n  when: '{when}'\n  do: '{action}'\n  allow: [slack]\n  max_runs: 1000\n"
        ));
    }
    yaml
}

/// (name, on, when, posts to Slack)
pub(crate) const RULES: [(&str, &str, &str, bool); 20] = [
    (
        "outside-participant-joined",
        "meeting.participant_joined",
        r#"event.payload.object.participant.email.ends_with("@rival.example")"#,
        true,
    ),
    (
        "participant-removed",
        "meeting.participant_left",
        r#"event.payload.object.participant.leave_reason.contains("removed by the host")"#,
        true,
    ),
    (
        "incident-call-started",
        "meeting.started",
        r#"event.payload.object.topic.starts_with("Incident")"#,
        true,
    ),
    (
        "marathon-meeting-ended",
        "meeting.ended",
        "event.payload.object.duration > 240",
        true,
    ),
    (
        "huge-recording",
        "recording.completed",
        "event.payload.object.total_size > 2000000000",
        true,
    ),
    (
        "contractor-account-created",
        "user.created",
        r#"event.payload.object.email.ends_with("@contractor.example")"#,
        true,
    ),
    (
        "open-recurring-meeting",
        "meeting.created",
        "event.payload.object.type == 8 && !event.payload.object.settings.waiting_room",
        true,
    ),
    (
        "ceo-joined",
        "meeting.participant_joined",
        r#"event.payload.object.participant.user_name == "The CEO""#,
        false,
    ),
    (
        "dial-in-joined",
        "meeting.participant_joined",
        r#"event.payload.object.participant.phone_number != """#,
        false,
    ),
    (
        "connection-lost",
        "meeting.participant_left",
        r#"event.payload.object.participant.leave_reason == "connection lost""#,
        false,
    ),
    (
        "host-left-early",
        "meeting.participant_left",
        "event.payload.object.participant.id == event.payload.object.host_id",
        false,
    ),
    (
        "webinar-started",
        "meeting.started",
        "event.payload.object.type == 5",
        false,
    ),
    (
        "hostless-meeting-started",
        "meeting.started",
        r#"event.payload.object.host_id == """#,
        false,
    ),
    (
        "empty-meeting-ended",
        "meeting.ended",
        "event.payload.object.duration == 0",
        false,
    ),
    (
        "board-review-overran",
        "meeting.ended",
        r#"event.payload.object.topic == "Board Review" && event.payload.object.duration > 600"#,
        false,
    ),
    (
        "many-files-recording",
        "recording.completed",
        "event.payload.object.recording_count > 20",
        false,
    ),
    (
        "empty-recording",
        "recording.completed",
        "event.payload.object.recording_files.len() == 0",
        false,
    ),
    (
        "guest-account-created",
        "user.created",
        "event.payload.object.type == 99",
        false,
    ),
    (
        "pmi-meeting-created",
        "meeting.created",
        "event.payload.object.settings.use_pmi",
        false,
    ),
    (
        "any-meeting-named-test",
        "meeting.*",
        r#"event.payload.object.topic == "zoomwire bench never""#,
        false,
    ),
];

const TOPICS: [&str; 8] = [
    "Weekly Sync",
    "Design Crit",
    "Sprint Planning",
    "Customer Call",
    "1:1",
    "All Hands",
    "Interview",
    "Retro",
];
const NAMES: [&str; 10] = [
    "Ada Lovelace",
    "Grace Hopper",
    "Alan Turing",
    "Barbara Liskov",
    "Edsger Dijkstra",
    "Frances Allen",
    "Donald Knuth",
    "Hedy Lamarr",
    "Ken Thompson",
    "Radia Perlman",
];

/// One generated event: its frame and whether it produces a Slack post.
#[derive(Debug, Clone)]
pub struct BenchEvent {
    /// A `message` frame whose content holds [`SENT_PLACEHOLDER`].
    pub frame: String,
    pub posts: bool,
}

impl BenchEvent {
    /// The frame with its send time filled in.
    pub fn frame_sent_at(&self, sent_us: i64) -> String {
        self.frame
            .replacen(SENT_PLACEHOLDER, &format!("{sent_us:016}"), 1)
    }
}

/// Makes events with a fixed seed, so runs are comparable.
pub struct Generator {
    rng: fastrand::Rng,
    /// Event `n` gets `event_ts = base_ms + n`: every dedupe key differs.
    base_ms: i64,
    next: i64,
}

impl Generator {
    pub fn new(seed: u64, base_ms: i64) -> Generator {
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            base_ms,
            next: 0,
        }
    }

    pub fn take(&mut self, count: usize) -> Vec<BenchEvent> {
        (0..count).map(|_| self.event()).collect()
    }

    /// The next event of the mix.
    pub fn event(&mut self) -> BenchEvent {
        let posts = self.rng.f64() < POST_SHARE;
        let ts = self.base_ms + self.next;
        self.next += 1;
        let roll = self.rng.u32(0..100);
        let (kind, object) = match roll {
            0..35 => ("meeting.participant_joined", self.joined(posts)),
            35..65 => ("meeting.participant_left", self.left(posts)),
            65..75 => ("meeting.started", self.meeting(posts, false)),
            75..85 => ("meeting.ended", self.meeting(false, posts)),
            85..91 => ("recording.completed", self.recording(posts)),
            91..95 => ("user.created", self.user(posts)),
            _ => ("meeting.created", self.created(posts)),
        };
        let body = json!({
            "event": kind,
            "event_ts": ts,
            "payload": {
                "account_id": "sim-account",
                "bench_sent_us": 0,
                "object": object,
            },
        })
        .to_string()
        .replacen(
            "\"bench_sent_us\":0",
            &format!("\"bench_sent_us\":{SENT_PLACEHOLDER}"),
            1,
        );
        let frame = json!({ "module": "message", "content": body }).to_string();
        BenchEvent { frame, posts }
    }

    fn meeting_id(&mut self) -> u64 {
        85_500_000_000 + self.rng.u64(0..500)
    }

    fn uuid(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut uuid: String = (0..22)
            .map(|_| ALPHABET[self.rng.usize(0..ALPHABET.len())] as char)
            .collect();
        uuid.push_str("==");
        uuid
    }

    /// The meeting object of meeting events; `incident` and `marathon` make it match.
    fn meeting(&mut self, incident: bool, marathon: bool) -> Value {
        let id = self.meeting_id();
        let topic = if incident {
            "Incident: checkout errors".to_string()
        } else {
            TOPICS[self.rng.usize(0..TOPICS.len())].to_string()
        };
        let duration = if marathon {
            241 + self.rng.i64(0..120)
        } else {
            15 + self.rng.i64(0..120)
        };
        json!({
            "id": id.to_string(),
            "uuid": self.uuid(),
            "host_id": "hU7x2QeLSmOa3kP9rT1bYw",
            "topic": topic,
            "type": 2,
            "start_time": "2024-11-19T07:06:40Z",
            "timezone": "Europe/Berlin",
            "duration": duration,
        })
    }

    fn participant(&mut self, outside: bool) -> Value {
        let name = NAMES[self.rng.usize(0..NAMES.len())];
        let domain = if outside {
            "rival.example"
        } else {
            "example.com"
        };
        let email = format!(
            "{}.{}@{domain}",
            name.replace(' ', ".").to_lowercase(),
            self.rng.u32(1..1000)
        );
        json!({
            "user_id": self.rng.u32(16_000_000..17_000_000).to_string(),
            "user_name": name,
            "id": self.uuid(),
            "participant_uuid": self.uuid(),
            "email": email,
            "registrant_id": "",
            "participant_user_id": self.uuid(),
            "customer_key": "",
            "phone_number": "",
        })
    }

    fn joined(&mut self, outside: bool) -> Value {
        let mut object = self.meeting(false, false);
        let mut participant = self.participant(outside);
        participant["join_time"] = json!("2024-11-19T07:07:45Z");
        object["participant"] = participant;
        object
    }

    fn left(&mut self, removed: bool) -> Value {
        let mut object = self.meeting(false, false);
        let mut participant = self.participant(false);
        participant["leave_time"] = json!("2024-11-19T07:57:45Z");
        participant["leave_reason"] = json!(if removed {
            "Ada was removed by the host."
        } else {
            "Ada left the meeting."
        });
        object["participant"] = participant;
        object
    }

    fn recording(&mut self, huge: bool) -> Value {
        let mut object = self.meeting(false, false);
        let size: u64 = if huge {
            2_100_000_000
        } else {
            self.rng.u64(5_000_000..900_000_000)
        };
        let file = |kind: &str, size: u64| {
            json!({
                "id": format!("rec-{kind}"),
                "recording_start": "2024-11-19T07:06:40Z",
                "recording_end": "2024-11-19T08:06:38Z",
                "file_type": kind,
                "file_extension": kind,
                "file_size": size,
                "download_url": "https://zoom.example/rec/download/x",
                "status": "completed",
                "recording_type": "shared_screen_with_speaker_view",
            })
        };
        object["total_size"] = json!(size);
        object["recording_count"] = json!(2);
        object["share_url"] = json!("https://zoom.example/rec/share/x");
        object["recording_files"] = json!([file("MP4", size / 8 * 7), file("M4A", size / 8)]);
        object
    }

    fn user(&mut self, contractor: bool) -> Value {
        let name = NAMES[self.rng.usize(0..NAMES.len())];
        let domain = if contractor {
            "contractor.example"
        } else {
            "example.com"
        };
        json!({
            "id": self.uuid(),
            "first_name": name.split(' ').next(),
            "last_name": name.split(' ').nth(1),
            "display_name": name,
            "email": format!("{}.{}@{domain}", name.replace(' ', ".").to_lowercase(), self.rng.u32(1..1000)),
            "type": 1,
        })
    }

    fn created(&mut self, open_recurring: bool) -> Value {
        let mut object = self.meeting(false, false);
        object["id"] = json!(self.meeting_id());
        object["type"] = json!(if open_recurring { 8 } else { 2 });
        object["settings"] = json!({
            "use_pmi": false,
            "waiting_room": !open_recurring,
            "join_before_host": false,
        });
        object
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Source};
    use crate::zoom::frame::{Frame, decode_frame};

    #[test]
    fn the_rules_load_and_exactly_the_posting_events_fire_one_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bench.yaml"), rules_yaml()).unwrap();
        let sources = crate::rules::RuleSources {
            paths: vec![dir.path().to_path_buf()],
            scripts_dir: dir.path().join("scripts"),
        };
        let rule_set = crate::rules::compile::load_rule_set(
            &sources,
            &crate::script::SandboxLimits::default(),
        )
        .unwrap_or_else(|errors| panic!("{errors:?}"));
        assert_eq!(rule_set.rules().len(), 20);
        let vars = rhai::Dynamic::from_map(rhai::Map::new());
        let mut generator = Generator::new(7, 1_732_000_000_000);
        let events = generator.take(2000);
        let mut posting = 0;
        let mut ids = std::collections::HashSet::new();
        for bench_event in &events {
            let frame = bench_event.frame_sent_at(1_732_000_000_123_456);
            let Frame::Event(event) = decode_frame(&frame, &Source::Websocket("b".into())).unwrap()
            else {
                panic!("not an event frame: {frame}");
            };
            let event: Event = *event;
            assert!(ids.insert(event.id.clone()), "dedupe keys differ");
            let matched = crate::engine::matcher::match_event(&rule_set, &event, &vars);
            assert!(matched.failures.is_empty(), "{:?}", matched.failures);
            assert_eq!(
                matched.matched.len(),
                usize::from(bench_event.posts),
                "{frame}"
            );
            posting += usize::from(bench_event.posts);
        }
        let share = posting as f64 / events.len() as f64;
        assert!((0.06..0.10).contains(&share), "about 8% post: {share}");
    }

    #[test]
    fn the_send_time_is_filled_in() {
        let event = Generator::new(1, 0).event();
        assert!(event.frame.contains(SENT_PLACEHOLDER));
        let frame = event.frame_sent_at(1_732_000_000_123_456);
        assert!(
            frame.contains("\\\"bench_sent_us\\\":1732000000123456"),
            "{frame}"
        );
    }
}
