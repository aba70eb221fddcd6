//! The stretch of account activity `zoomwire demo` plays: one working week
//! of the simulator's seeded account (meetings scheduled, started, joined,
//! left and ended, cloud recordings completing, a user created), then the
//! Monday morning when the weekly report's schedule comes due.
//!
//! The events use the seeded ids (meeting ids and UUIDs, host user ids,
//! past participants), so the rules find what they look up through the
//! simulator's REST API: `meeting-ended-email` gets the host's email and the
//! participant list, `recording-to-slack` the seeded recording files, and
//! `weekly-report` the host's recordings. Times are the story's (November
//! 2024, the seed's week), not the wall clock.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};

use crate::sim::SimHandle;
use crate::sim::data::{
    ALICE_USER_ID, DOUBLE_SLASH_MEETING_ID, HOST_USER_ID, SLASH_MEETING_ID, WEEKLY_SYNC_ID,
};

/// The account id the events carry (the simulator's default).
const ACCOUNT_ID: &str = "sim-account";
/// How many seeded participants each meeting of the story has.
pub const PARTICIPANTS_PER_MEETING: usize = 4;

/// One moment of the story.
#[derive(Debug, Clone)]
pub struct Step {
    /// The story's time of this step.
    pub at: DateTime<Utc>,
    pub action: Action,
    /// One line saying what happens, for the terminal.
    pub caption: String,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// The simulator sends this Zoom event over the WebSocket.
    Event(Value),
    /// The engine's clock moves to the scheduler's next firing.
    ClockToNextFiring,
}

/// Why the story could not be built from the simulator's data.
#[derive(Debug, thiserror::Error)]
#[error("the simulator has no seeded {0}")]
pub struct MissingSeed(String);

/// The whole story, in order.
pub fn account_week(sim: &SimHandle) -> Result<Vec<Step>, MissingSeed> {
    let mut steps = Vec::new();
    let board_review = Meeting::seeded(sim, SLASH_MEETING_ID, at(18, 13, 0))?;
    let weekly_sync = Meeting::seeded(sim, WEEKLY_SYNC_ID, at(19, 7, 6))?;
    let design_crit = Meeting::seeded(sim, DOUBLE_SLASH_MEETING_ID, at(21, 10, 30))?;
    steps.push(design_crit.created(at(18, 12, 40)));
    steps.extend(board_review.session(sim, Some(2))?);
    steps.extend(weekly_sync.session(sim, None)?);
    steps.push(user_created(at(20, 9, 15)));
    steps.extend(design_crit.session(sim, Some(1))?);
    steps.push(short_clip(sim, at(21, 14, 5))?);
    steps.push(Step {
        at: at(25, 8, 0),
        action: Action::ClockToNextFiring,
        caption: "the weekend passes; the engine's clock moves to the scheduler's next firing"
            .into(),
    });
    Ok(steps)
}

/// A time in the story's week (November 2024, UTC).
fn at(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 11, day, hour, minute, 0)
        .single()
        .unwrap_or_default()
}

fn iso(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn event(kind: &str, time: DateTime<Utc>, payload: Value) -> Value {
    json!({ "event": kind, "event_ts": time.timestamp_millis(), "payload": payload })
}

/// A seeded meeting as the story uses it.
struct Meeting {
    id: u64,
    object: Value,
    start: DateTime<Utc>,
    minutes: i64,
}

impl Meeting {
    fn seeded(sim: &SimHandle, id: u64, start: DateTime<Utc>) -> Result<Meeting, MissingSeed> {
        let object = sim
            .meeting(id)
            .ok_or_else(|| MissingSeed(format!("meeting {id}")))?;
        let minutes = object["duration"].as_i64().unwrap_or(60);
        Ok(Meeting {
            id,
            object,
            start,
            minutes,
        })
    }

    fn topic(&self) -> &str {
        self.object["topic"].as_str().unwrap_or("a meeting")
    }

    /// The meeting object as Zoom's meeting events carry it.
    fn event_object(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "uuid": self.object["uuid"],
            "host_id": self.object["host_id"],
            "topic": self.object["topic"],
            "type": 2,
            "start_time": iso(self.start),
            "timezone": "Europe/Berlin",
            "duration": self.minutes,
        })
    }

    fn payload(&self, extra: impl FnOnce(&mut Value)) -> Value {
        let mut object = self.event_object();
        extra(&mut object);
        json!({ "account_id": ACCOUNT_ID, "object": object })
    }

    fn created(&self, time: DateTime<Utc>) -> Step {
        let mut object = self.event_object();
        object["id"] = json!(self.id);
        object["join_url"] = json!(format!("https://zoom.example/j/{}", self.id));
        let payload = json!({
            "account_id": ACCOUNT_ID,
            "operator": "alice@example.com",
            "operator_id": ALICE_USER_ID,
            "operation": "single",
            "object": object,
        });
        Step {
            at: time,
            action: Action::Event(event("meeting.created", time, payload)),
            caption: format!(
                "Alice schedules \"{}\" for {}",
                self.topic(),
                super::show::local_time(self.start)
            ),
        }
    }

    /// Started, participants join (`leave_early` of them leave before the
    /// end), ended, and the cloud recording completes if the seed has one.
    fn session(
        &self,
        sim: &SimHandle,
        leave_early: Option<usize>,
    ) -> Result<Vec<Step>, MissingSeed> {
        let topic = self.topic().to_string();
        let host = sim
            .user(self.object["host_id"].as_str().unwrap_or_default())
            .ok_or_else(|| MissingSeed(format!("host of {topic}")))?;
        let end = self.start + Duration::minutes(self.minutes);
        let mut steps = vec![Step {
            at: self.start,
            action: Action::Event(event("meeting.started", self.start, self.payload(|_| {}))),
            caption: format!(
                "\"{topic}\" starts, hosted by {}",
                host["display_name"].as_str().unwrap_or("its host")
            ),
        }];
        let participants = sim.past_participants(self.id);
        for (i, participant) in participants
            .iter()
            .take(PARTICIPANTS_PER_MEETING)
            .enumerate()
        {
            let joined = self.start + Duration::minutes(1 + i as i64);
            steps.push(self.participant_step(participant, "joined", joined, &topic));
        }
        if let Some(early) = leave_early.and_then(|i| participants.get(i)) {
            let left = self.start + Duration::minutes(self.minutes / 2);
            steps.push(self.participant_step(early, "left", left, &topic));
        }
        steps.push(Step {
            at: end,
            action: Action::Event(event(
                "meeting.ended",
                end,
                self.payload(|o| o["end_time"] = json!(iso(end))),
            )),
            caption: format!("\"{topic}\" ends after {} min", self.minutes),
        });
        if let Some(mut recording) = sim.recording_completed_event(self.id) {
            let ready = end + Duration::minutes(22);
            recording["event_ts"] = json!(ready.timestamp_millis());
            recording["payload"]["account_id"] = json!(ACCOUNT_ID);
            let files = recording["payload"]["object"]["recording_files"]
                .as_array()
                .map_or(0, Vec::len);
            steps.push(Step {
                at: ready,
                action: Action::Event(recording),
                caption: format!(
                    "the cloud recording of \"{topic}\" is ready ({} min, {files} files)",
                    self.minutes
                ),
            });
        }
        Ok(steps)
    }

    fn participant_step(
        &self,
        participant: &Value,
        what: &str,
        time: DateTime<Utc>,
        topic: &str,
    ) -> Step {
        let name = participant["name"].as_str().unwrap_or("someone");
        let mut detail = json!({
            "user_id": participant["user_id"],
            "user_name": name,
            "id": participant["id"],
            "participant_uuid": participant["id"],
            "email": participant["user_email"],
            "registrant_id": "",
            "participant_user_id": participant["id"],
            "customer_key": "",
            "phone_number": "",
        });
        if what == "joined" {
            detail["join_time"] = json!(iso(time));
        } else {
            detail["leave_time"] = json!(iso(time));
            detail["leave_reason"] = json!(format!("{name} left the meeting."));
        }
        let kind = format!("meeting.participant_{what}");
        Step {
            at: time,
            action: Action::Event(event(
                &kind,
                time,
                self.payload(|o| o["participant"] = detail),
            )),
            caption: format!("{name} {what} \"{topic}\""),
        }
    }
}

fn user_created(time: DateTime<Utc>) -> Step {
    let payload = json!({
        "account_id": ACCOUNT_ID,
        "operator": "host@example.com",
        "operator_id": HOST_USER_ID,
        "creation_type": "create",
        "object": {
            "id": "nE9wU8sR7eI6dD5aB4cC3d",
            "first_name": "Katherine",
            "last_name": "Johnson",
            "display_name": "Katherine Johnson",
            "email": "katherine.johnson@example.com",
            "type": 1,
        },
    });
    Step {
        at: time,
        action: Action::Event(event("user.created", time, payload)),
        caption: "Hana adds a new user, Katherine Johnson <katherine.johnson@example.com>".into(),
    }
}

/// A two-minute recording: too short for `recording-to-slack`'s condition.
fn short_clip(sim: &SimHandle, time: DateTime<Utc>) -> Result<Step, MissingSeed> {
    let mut recording = sim
        .recording_completed_event(DOUBLE_SLASH_MEETING_ID)
        .ok_or_else(|| MissingSeed("recording".into()))?;
    let object = &mut recording["payload"]["object"];
    object["topic"] = json!("Mic check");
    object["uuid"] = json!("mC1kT2eS3tU4vW5xY6zA7b==");
    object["id"] = json!(85599988877u64);
    object["duration"] = json!(2);
    object["share_url"] = json!("https://zoom.example/rec/share/mic-check");
    if let Some(files) = object["recording_files"].as_array_mut() {
        files.truncate(1);
        files[0]["file_size"] = json!(2_400_000);
    }
    recording["event_ts"] = json!(time.timestamp_millis());
    recording["payload"]["account_id"] = json!(ACCOUNT_ID);
    Ok(Step {
        at: time,
        action: Action::Event(recording),
        caption: "Alice's 2-minute \"Mic check\" recording is ready".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zoomwire_engine::event::{Event, Source};

    #[tokio::test]
    async fn the_story_is_in_order_with_distinct_events() {
        let sim = crate::sim::start(crate::sim::SimConfig {
            participants_per_meeting: PARTICIPANTS_PER_MEETING,
            ..crate::sim::SimConfig::default()
        })
        .await
        .unwrap();
        let steps = account_week(&sim).unwrap();
        let mut ids = std::collections::HashSet::new();
        for pair in steps.windows(2) {
            assert!(
                pair[0].at <= pair[1].at,
                "{:?} after {:?}",
                pair[0],
                pair[1]
            );
        }
        for step in &steps {
            if let Action::Event(body) = &step.action {
                let event = Event::from_value(body, Source::Websocket("default".into())).unwrap();
                assert!(
                    ids.insert(event.id.clone()),
                    "dedupe key twice: {}",
                    event.id
                );
                assert_eq!(body["event_ts"], step.at.timestamp_millis());
            }
        }
        assert!(matches!(
            steps.last().unwrap().action,
            Action::ClockToNextFiring
        ));
        let kinds: std::collections::HashSet<_> = steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Event(body) => body["event"].as_str().map(str::to_string),
                Action::ClockToNextFiring => None,
            })
            .collect();
        for kind in [
            "meeting.created",
            "meeting.started",
            "meeting.participant_joined",
            "meeting.participant_left",
            "meeting.ended",
            "recording.completed",
            "user.created",
        ] {
            assert!(kinds.contains(kind), "the story has a {kind}");
        }
    }
}
