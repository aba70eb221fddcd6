//! What `zoomwire bench` feeds the daemon: 20 rules written as the README
//! teaches them, and a stream of Zoom events of a realistic mix with bursts
//! of one event type.
//!
//! The rules keep every default (`mode`, `max_runs`, `timeout`) and their
//! conditions use what users reach for: string methods (`contains`,
//! `sub_string`, `to_lower`, `split`, `ends_with`), `in` on arrays, array
//! indexing, two event fields compared, `&&`, `||` and `!`. Ten rules post
//! to Slack; the other ten are filters an account might also have, which
//! cost matching and rarely a run.
//!
//! Every post names its rule and its event (`n=<event_ts>`), and
//! [`expected_posts`] says which rules must post for an event, so the bench
//! can check that every expected post arrived exactly once: a missing or a
//! doubled post fails the bench. Every event also carries
//! `payload.bench_sent_us`, its send time, which the posts copy (`t=...`)
//! so that the latency from frame sent to post received can be read.
//!
//! The stream is the usual mix (participants joining and leaving most of
//! all, some meetings starting and ending, recordings, users) broken by
//! bursts of one type: an all-hands where hundreds join one meeting at
//! once, and a morning's recordings finishing together, each of which one
//! rule posts.

use serde_json::{Value, json};

/// The Slack channel the posting rules use (one the simulator knows).
pub const CHANNEL: &str = "#alerts";
/// Stands for the send time until the frame is sent (16 digits, as a real one).
pub const SENT_PLACEHOLDER: &str = "1111111111111111";
/// One event in this many starts a burst.
const BURST_EVERY: u32 = 2_500;

/// A rule of the workload: name, trigger, condition (`None`: always), and
/// whether it posts to Slack (else it logs a line).
pub struct BenchRule {
    pub name: &'static str,
    pub on: &'static str,
    pub when: Option<&'static str>,
    pub posts: bool,
}

const fn rule(
    name: &'static str,
    on: &'static str,
    when: Option<&'static str>,
    posts: bool,
) -> BenchRule {
    BenchRule {
        name,
        on,
        when,
        posts,
    }
}

/// The 20 rules.
pub const RULES: [BenchRule; 20] = [
    rule(
        "outside-participant-joined",
        "meeting.participant_joined",
        Some(r#"event.payload.object.participant.email.to_lower().ends_with("@rival.example")"#),
        true,
    ),
    rule(
        "late-night-join",
        "meeting.participant_joined",
        Some(r#"event.payload.object.participant.join_time.sub_string(11, 2) >= "22""#),
        true,
    ),
    rule(
        "host-left",
        "meeting.participant_left",
        Some("event.payload.object.participant.id == event.payload.object.host_id"),
        true,
    ),
    rule(
        "removed-by-host",
        "meeting.participant_left",
        Some(r#"event.payload.object.participant.leave_reason.contains("removed by the host")"#),
        true,
    ),
    rule(
        "board-meeting-started",
        "meeting.started",
        Some(r#"event.payload.object.topic.contains("Board")"#),
        true,
    ),
    rule(
        "long-meeting-ended",
        "meeting.ended",
        Some(
            r#"event.payload.object.duration > 240 && !event.payload.object.topic.contains("Workshop")"#,
        ),
        true,
    ),
    rule("recording-to-slack", "recording.completed", None, true),
    rule(
        "chat-saved",
        "recording.completed",
        Some(r#"event.payload.object.recording_files[2].file_type == "CHAT""#),
        true,
    ),
    rule(
        "contractor-created",
        "user.created",
        Some(
            r#"event.payload.object.email.split("@")[1] in ["contractor.example", "agency.example"]"#,
        ),
        true,
    ),
    rule(
        "webinar-or-open-meeting",
        "meeting.created",
        Some("event.payload.object.type in [5, 9] || !event.payload.object.settings.waiting_room"),
        true,
    ),
    rule(
        "ceo-joined",
        "meeting.participant_joined",
        Some(r#"event.payload.object.participant.user_name == "The CEO""#),
        false,
    ),
    rule(
        "dial-in-joined",
        "meeting.participant_joined",
        Some(r#"event.payload.object.participant.phone_number != """#),
        false,
    ),
    rule(
        "connection-lost",
        "meeting.participant_left",
        Some(r#"event.payload.object.participant.leave_reason.to_lower() == "connection lost""#),
        false,
    ),
    rule(
        "webinar-started",
        "meeting.started",
        Some("event.payload.object.type == 5"),
        false,
    ),
    rule(
        "hostless-meeting-started",
        "meeting.started",
        Some(r#"event.payload.object.host_id == """#),
        false,
    ),
    rule(
        "empty-meeting-ended",
        "meeting.ended",
        Some("event.payload.object.duration == 0"),
        false,
    ),
    rule(
        "many-files-recording",
        "recording.completed",
        Some("event.payload.object.recording_count > 20"),
        false,
    ),
    rule(
        "guest-account-created",
        "user.created",
        Some("event.payload.object.type == 99"),
        false,
    ),
    rule(
        "pmi-meeting-created",
        "meeting.created",
        Some("event.payload.object.settings.use_pmi"),
        false,
    ),
    rule(
        "test-meeting",
        "meeting.*",
        Some(r#"event.payload.object.topic.to_lower().starts_with("zoomwire bench never")"#),
        false,
    ),
];

/// The 20 rules as one YAML file holding a list, each as a user writes it:
/// no `mode`, `max_runs` or `timeout`.
pub fn rules_yaml() -> String {
    let mut yaml =
        String::from("# zoomwire bench: 10 posting rules and 10 filters, default settings\n");
    for rule in &RULES {
        yaml.push_str(&format!("- name: {}\n  on: {}\n", rule.name, rule.on));
        if let Some(when) = rule.when {
            yaml.push_str(&format!("  when: '{when}'\n"));
        }
        if rule.posts {
            yaml.push_str(&format!(
                "  allow: [slack]\n  do: |\n    slack::post(\"{CHANNEL}\", `t=${{event.payload.bench_sent_us}} n=${{event.event_ts}} {}`);\n",
                rule.name
            ));
        } else {
            yaml.push_str(&format!(
                "  do: |\n    log::info(\"{} matched\");\n",
                rule.name
            ));
        }
    }
    yaml
}

/// The rules that must post for this event body, by name.
pub fn expected_posts(body: &Value) -> Vec<&'static str> {
    let kind = body["event"].as_str().unwrap_or_default();
    let object = &body["payload"]["object"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let participant = &object["participant"];
    let mut posts = Vec::new();
    let mut post = |name, holds: bool| {
        if holds {
            posts.push(name);
        }
    };
    match kind {
        "meeting.participant_joined" => {
            let email = text(&participant["email"]).to_lowercase();
            post(
                "outside-participant-joined",
                email.ends_with("@rival.example"),
            );
            let hour = text(&participant["join_time"])
                .chars()
                .skip(11)
                .take(2)
                .collect::<String>();
            post("late-night-join", hour.as_str() >= "22");
        }
        "meeting.participant_left" => {
            post("host-left", participant["id"] == object["host_id"]);
            let reason = text(&participant["leave_reason"]);
            post("removed-by-host", reason.contains("removed by the host"));
        }
        "meeting.started" => post(
            "board-meeting-started",
            text(&object["topic"]).contains("Board"),
        ),
        "meeting.ended" => post(
            "long-meeting-ended",
            object["duration"].as_i64().unwrap_or(0) > 240
                && !text(&object["topic"]).contains("Workshop"),
        ),
        "recording.completed" => {
            post("recording-to-slack", true);
            post(
                "chat-saved",
                object["recording_files"][2]["file_type"] == "CHAT",
            );
        }
        "user.created" => {
            let domain = text(&object["email"])
                .split('@')
                .nth(1)
                .unwrap_or_default()
                .to_string();
            post(
                "contractor-created",
                ["contractor.example", "agency.example"].contains(&domain.as_str()),
            );
        }
        "meeting.created" => post(
            "webinar-or-open-meeting",
            [5, 9].contains(&object["type"].as_i64().unwrap_or(0))
                || object["settings"]["waiting_room"] == false,
        ),
        _ => {}
    }
    posts
}

const TOPICS: [&str; 10] = [
    "Weekly Sync",
    "Design Crit",
    "Sprint Planning",
    "Customer Call",
    "1:1",
    "All Hands",
    "Interview",
    "Retro",
    "Board Review",
    "Onboarding Workshop",
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
const HOST_ID: &str = "hU7x2QeLSmOa3kP9rT1bYw";

/// One generated event: its frame, its `event_ts` and the rules that must
/// post for it.
#[derive(Debug, Clone)]
pub struct BenchEvent {
    /// A `message` frame whose content holds [`SENT_PLACEHOLDER`].
    pub frame: String,
    /// `event_ts`, which every post of this event names (`n=...`).
    pub ts: i64,
    pub posts: Vec<&'static str>,
}

impl BenchEvent {
    /// The frame with its send time filled in.
    pub fn frame_sent_at(&self, sent_us: i64) -> String {
        self.frame
            .replacen(SENT_PLACEHOLDER, &format!("{sent_us:016}"), 1)
    }
}

/// What a burst repeats.
#[derive(Debug, Clone, Copy)]
enum Burst {
    /// Participants join one big meeting.
    AllHands { left: u32, meeting: u64 },
    /// Recordings finish together.
    Recordings { left: u32 },
}

/// Makes events with a fixed seed, so runs are comparable.
pub struct Generator {
    rng: fastrand::Rng,
    /// Event `n` gets `event_ts = base_ms + n`: every dedupe key differs.
    base_ms: i64,
    next: i64,
    /// Whether the stream has bursts of one type (the latency phase has none).
    bursts: bool,
    burst: Option<Burst>,
}

impl Generator {
    pub fn new(seed: u64, base_ms: i64) -> Generator {
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            base_ms,
            next: 0,
            bursts: true,
            burst: None,
        }
    }

    /// Turns bursts on or off from now on.
    pub fn with_bursts(&mut self, bursts: bool) -> &mut Generator {
        self.bursts = bursts;
        if !bursts {
            self.burst = None;
        }
        self
    }

    pub fn take(&mut self, count: usize) -> Vec<BenchEvent> {
        (0..count).map(|_| self.event()).collect()
    }

    /// The next event of the stream.
    pub fn event(&mut self) -> BenchEvent {
        let ts = self.base_ms + self.next;
        self.next += 1;
        let (kind, object) = match self.next_burst_event() {
            Some(event) => event,
            None => self.mixed_event(),
        };
        let body = json!({
            "event": kind,
            "event_ts": ts,
            "payload": {
                "account_id": "sim-account",
                "bench_sent_us": 0,
                "object": object,
            },
        });
        let posts = expected_posts(&body);
        let content = body.to_string().replacen(
            "\"bench_sent_us\":0",
            &format!("\"bench_sent_us\":{SENT_PLACEHOLDER}"),
            1,
        );
        let frame = json!({ "module": "message", "content": content }).to_string();
        BenchEvent { frame, ts, posts }
    }

    /// The next event of a burst under way, or of a new one.
    fn next_burst_event(&mut self) -> Option<(&'static str, Value)> {
        if self.burst.is_none() && self.bursts && self.rng.u32(0..BURST_EVERY) == 0 {
            self.burst = Some(if self.rng.bool() {
                Burst::AllHands {
                    left: self.rng.u32(200..600),
                    meeting: self.meeting_id(),
                }
            } else {
                Burst::Recordings {
                    left: self.rng.u32(100..300),
                }
            });
        }
        let burst = self.burst?;
        let event = match burst {
            Burst::AllHands { meeting, .. } => {
                let outside = self.rng.u32(0..100) < 3;
                let mut object = self.joined(outside);
                object["id"] = json!(meeting.to_string());
                object["topic"] = json!("All Hands");
                ("meeting.participant_joined", object)
            }
            Burst::Recordings { .. } => {
                let chat = self.rng.u32(0..100) < 30;
                ("recording.completed", self.recording(chat))
            }
        };
        self.burst = match burst {
            Burst::AllHands { left, meeting } if left > 1 => Some(Burst::AllHands {
                left: left - 1,
                meeting,
            }),
            Burst::Recordings { left } if left > 1 => Some(Burst::Recordings { left: left - 1 }),
            _ => None,
        };
        Some(event)
    }

    /// An event of the usual mix: most match no posting rule.
    fn mixed_event(&mut self) -> (&'static str, Value) {
        let rare = |rng: &mut fastrand::Rng, percent: u32| rng.u32(0..100) < percent;
        match self.rng.u32(0..100) {
            0..38 => {
                let outside = rare(&mut self.rng, 2);
                ("meeting.participant_joined", self.joined(outside))
            }
            38..70 => {
                let removed = rare(&mut self.rng, 2);
                ("meeting.participant_left", self.left(removed))
            }
            70..79 => {
                let board = rare(&mut self.rng, 4);
                ("meeting.started", self.meeting(board, false))
            }
            79..88 => {
                let long = rare(&mut self.rng, 8);
                ("meeting.ended", self.meeting(false, long))
            }
            88..92 => {
                let chat = rare(&mut self.rng, 30);
                ("recording.completed", self.recording(chat))
            }
            92..95 => {
                let contractor = rare(&mut self.rng, 10);
                ("user.created", self.user(contractor))
            }
            _ => {
                let open = rare(&mut self.rng, 6);
                ("meeting.created", self.created(open))
            }
        }
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

    /// A time of day as Zoom writes it; `late` puts it at 22:00 or after.
    fn time(&mut self, late: bool) -> String {
        let hour = if late {
            self.rng.u32(22..24)
        } else {
            self.rng.u32(6..22)
        };
        format!(
            "2024-11-19T{hour:02}:{:02}:{:02}Z",
            self.rng.u32(0..60),
            self.rng.u32(0..60)
        )
    }

    /// The meeting object of meeting events; `board` and `long` make their rules post.
    fn meeting(&mut self, board: bool, long: bool) -> Value {
        let id = self.meeting_id();
        let topic = if board {
            "Board Review".to_string()
        } else {
            // Any topic but the board's (a long workshop does not post either).
            TOPICS[self.rng.usize(0..TOPICS.len())].replace("Board Review", "Budget Review")
        };
        let duration = if long {
            241 + self.rng.i64(0..120)
        } else {
            15 + self.rng.i64(0..120)
        };
        let start_time = self.time(false);
        json!({
            "id": id.to_string(),
            "uuid": self.uuid(),
            "host_id": HOST_ID,
            "topic": topic,
            "type": 2,
            "start_time": start_time,
            "timezone": "Europe/Berlin",
            "duration": duration,
        })
    }

    fn participant(&mut self, outside: bool) -> Value {
        let name = NAMES[self.rng.usize(0..NAMES.len())];
        let domain = if outside {
            "Rival.Example"
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
        let late = self.rng.u32(0..100) < 2;
        participant["join_time"] = json!(self.time(late));
        object["participant"] = participant;
        object
    }

    fn left(&mut self, removed: bool) -> Value {
        let mut object = self.meeting(false, false);
        let mut participant = self.participant(false);
        if self.rng.u32(0..100) < 2 {
            participant["id"] = json!(HOST_ID);
        }
        participant["leave_time"] = json!(self.time(false));
        participant["leave_reason"] = json!(if removed {
            "Ada was removed by the host."
        } else {
            "Ada left the meeting."
        });
        object["participant"] = participant;
        object
    }

    fn recording(&mut self, chat: bool) -> Value {
        let mut object = self.meeting(false, false);
        let size: u64 = self.rng.u64(5_000_000..900_000_000);
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
        let third = if chat { "CHAT" } else { "TIMELINE" };
        object["total_size"] = json!(size);
        object["recording_count"] = json!(3);
        object["share_url"] = json!("https://zoom.example/rec/share/x");
        object["recording_files"] = json!([
            file("MP4", size / 8 * 7),
            file("M4A", size / 8),
            file(third, 2_000)
        ]);
        object
    }

    fn user(&mut self, contractor: bool) -> Value {
        let name = NAMES[self.rng.usize(0..NAMES.len())];
        let domain = match (contractor, self.rng.bool()) {
            (true, true) => "contractor.example",
            (true, false) => "agency.example",
            (false, _) => "example.com",
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

    fn created(&mut self, open: bool) -> Value {
        let mut object = self.meeting(false, false);
        object["id"] = json!(self.meeting_id());
        object["type"] = json!(2);
        object["settings"] = json!({
            "use_pmi": false,
            "waiting_room": !open,
            "join_before_host": false,
        });
        object
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zoomwire_engine::event::{Event, Source};
    use zoomwire_engine::zoom::frame::{Frame, decode_frame};

    #[test]
    fn the_rules_keep_every_default_and_fire_exactly_the_expected_posts() {
        let yaml = rules_yaml();
        for setting in ["mode:", "max_runs:", "timeout:"] {
            assert!(!yaml.contains(setting), "{setting} in:\n{yaml}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bench.yaml"), yaml).unwrap();
        let sources = zoomwire_engine::rules::RuleSources {
            paths: vec![dir.path().to_path_buf()],
            scripts_dir: dir.path().join("scripts"),
        };
        let rule_set = zoomwire_engine::rules::compile::load_rule_set(
            &sources,
            &zoomwire_engine::script::SandboxLimits::default(),
        )
        .unwrap_or_else(|errors| panic!("{errors:?}"));
        assert_eq!(rule_set.rules().len(), 20);
        let slow: Vec<&str> = rule_set
            .rules()
            .iter()
            .filter(|r| r.condition.is_some() && r.fast_condition.is_none())
            .map(|r| &*r.name)
            .collect();
        assert!(slow.is_empty(), "conditions left to Rhai: {slow:?}");
        let vars = rhai::Dynamic::from_map(rhai::Map::new());
        let mut generator = Generator::new(7, 1_732_000_000_000);
        let events = generator.take(20_000);
        let (mut posts, mut fired) = (0, std::collections::BTreeSet::new());
        let mut ids = std::collections::HashSet::new();
        for bench_event in &events {
            let frame = bench_event.frame_sent_at(1_732_000_000_123_456);
            let Frame::Event(event) = decode_frame(&frame, &Source::Websocket("b".into())).unwrap()
            else {
                panic!("not an event frame: {frame}");
            };
            let event: Event = *event;
            assert!(ids.insert(event.id.clone()), "dedupe keys differ");
            let matched = zoomwire_engine::engine::matcher::match_event(&rule_set, &event, &vars);
            assert!(matched.failures.is_empty(), "{:?}", matched.failures);
            assert!(
                !event.body_is_built(),
                "matching made the Rhai value: {frame}"
            );
            let posting: Vec<&'static str> = matched
                .matched
                .iter()
                .filter_map(|m| RULES.iter().find(|r| *r.name == *m.rule.name && r.posts))
                .map(|r| r.name)
                .collect();
            assert_eq!(posting, bench_event.posts, "{frame}");
            posts += posting.len();
            fired.extend(posting);
        }
        let share = posts as f64 / events.len() as f64;
        assert!((0.05..0.15).contains(&share), "about 8% post: {share}");
        assert_eq!(fired.len(), 10, "every posting rule fires: {fired:?}");
    }

    #[test]
    fn the_stream_has_bursts_of_one_type() {
        let events = Generator::new(3, 0).take(20_000);
        let types: Vec<String> = events
            .iter()
            .map(|e| {
                let frame: Value = serde_json::from_str(&e.frame).unwrap();
                let body: Value = serde_json::from_str(frame["content"].as_str().unwrap()).unwrap();
                body["event"].as_str().unwrap().to_string()
            })
            .collect();
        let longest_run = types
            .chunk_by(|a, b| a == b)
            .map(<[String]>::len)
            .max()
            .unwrap();
        assert!(longest_run >= 100, "{longest_run}");
        let calm = Generator::new(3, 0).with_bursts(false).take(5_000);
        assert!(calm.iter().all(|e| e.posts.len() <= 2));
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
