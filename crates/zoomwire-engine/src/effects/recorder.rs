//! The recording fake behind `--dry-run` and rule tests: it performs nothing,
//! answers each request with a canned answer (or a harmless default), and
//! keeps per-rule state in memory.
//!
//! What a run called is recorded by the sandbox, not here, so the daemon and
//! the fake produce the same run records.

use parking_lot::Mutex;
use std::collections::HashMap;

use serde_json::{Value, json};

use super::{
    BoxFuture, EffectContext, EffectError, EffectErrorKind, EffectName, EffectRequest, Effects,
};

/// A canned answer: used for requests named `effect` whose arguments contain
/// `args` (partially, see [`json_contains`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CannedAnswer {
    pub effect: String,
    pub args: Value,
    pub answer: Result<Value, EffectError>,
}

/// Effects that change nothing.
#[derive(Debug, Default)]
pub struct RecordingEffects {
    canned: Vec<CannedAnswer>,
    state: Mutex<HashMap<(String, String), Value>>,
}

impl RecordingEffects {
    pub fn new(canned: Vec<CannedAnswer>) -> RecordingEffects {
        RecordingEffects {
            canned,
            state: Mutex::default(),
        }
    }

    /// Seeds a rule's state, as a test's `state:` does.
    pub fn set_state(&self, rule: &str, key: &str, value: Value) {
        self.lock_state()
            .insert((rule.to_string(), key.to_string()), value);
    }

    pub fn state(&self, rule: &str, key: &str) -> Option<Value> {
        self.lock_state()
            .get(&(rule.to_string(), key.to_string()))
            .cloned()
    }

    fn lock_state(&self) -> parking_lot::MutexGuard<'_, HashMap<(String, String), Value>> {
        // A poisoned lock only means a test panicked mid-insert; the map is still usable.
        self.state.lock()
    }

    fn answer(
        &self,
        context: &EffectContext,
        request: &EffectRequest,
    ) -> Result<Value, EffectError> {
        if let Some(canned) = self
            .canned
            .iter()
            .find(|c| c.effect == request.name && json_contains(&request.args, &c.args))
        {
            return canned.answer.clone();
        }
        let args = &request.args;
        let key = args["key"].as_str().unwrap_or_default().to_string();
        let unknown = || {
            let name = request.name.as_str();
            Err(EffectError::new(
                name,
                EffectErrorKind::Permanent,
                format!("unknown effect `{name}`"),
            ))
        };
        let Some(effect) = EffectName::from_name(&request.name) else {
            return unknown();
        };
        match effect {
            EffectName::StateGet => Ok(self
                .lock_state()
                .get(&(context.rule.to_string(), key))
                .cloned()
                .unwrap_or(Value::Null)),
            EffectName::StateSet => {
                self.lock_state()
                    .insert((context.rule.to_string(), key), args["value"].clone());
                Ok(Value::Null)
            }
            EffectName::ZoomPaginate => Ok(json!([])),
            EffectName::ZoomGet
            | EffectName::ZoomPost
            | EffectName::ZoomPatch
            | EffectName::ZoomPut => Ok(json!({})),
            EffectName::ZoomDelete | EffectName::SlackWebhook => Ok(Value::Null),
            EffectName::SlackPost => {
                Ok(json!({"ok": true, "channel": args["channel"], "ts": "1700000000.000100"}))
            }
            EffectName::EmailSend => Ok(json!({"accepted": true})),
            EffectName::HttpRequest => Ok(json!({"status": 200, "headers": {}, "body": ""})),
            EffectName::ZoomDownload => Ok(json!({"path": args["dest"], "bytes": 0})),
            // The gateway answers the clock itself.
            EffectName::Now => unknown(),
        }
    }
}

impl Effects for RecordingEffects {
    fn perform<'a>(
        &'a self,
        context: &'a EffectContext,
        request: &'a EffectRequest,
    ) -> BoxFuture<'a, Result<Value, EffectError>> {
        let answer = self.answer(context, request);
        Box::pin(async move { answer })
    }
}

/// Whether `actual` contains `expected`: objects match when every expected
/// key matches, arrays when every expected item matches the item at the same
/// place, strings exactly, numbers by value (so `5` matches `5.0`).
pub fn json_contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (_, Value::Null) => true,
        (Value::Object(actual), Value::Object(expected)) => expected
            .iter()
            .all(|(key, want)| actual.get(key).is_some_and(|got| json_contains(got, want))),
        (Value::Array(actual), Value::Array(expected)) => {
            expected.len() <= actual.len()
                && expected
                    .iter()
                    .zip(actual)
                    .all(|(want, got)| json_contains(got, want))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn context() -> EffectContext {
        EffectContext {
            rule: Arc::from("r"),
            run_id: Arc::from("run-1"),
            deadline: Instant::now() + Duration::from_secs(1),
            http_hosts: Arc::from(Vec::new()),
            download_token: None,
            zoom_account: Default::default(),
        }
    }

    #[test]
    fn partial_matching() {
        let actual = json!({"channel": "#a", "text": "hi", "n": 5, "list": [1, 2, 3]});
        assert!(json_contains(&actual, &json!({"channel": "#a"})));
        assert!(json_contains(&actual, &json!({"n": 5.0, "list": [1, 2]})));
        assert!(!json_contains(&actual, &json!({"channel": "#b"})));
        assert!(!json_contains(&actual, &json!({"missing": 1})));
        assert!(!json_contains(&actual, &json!({"list": [2]})));
    }

    #[tokio::test]
    async fn canned_answers_win_over_defaults() {
        let effects = RecordingEffects::new(vec![CannedAnswer {
            effect: "zoom.get".into(),
            args: json!({"path": "/users/{id}"}),
            answer: Ok(json!({"email": "a@b.c"})),
        }]);
        let ctx = context();
        let hit = EffectRequest::new("zoom.get", json!({"path": "/users/{id}", "params": {}}));
        let miss = EffectRequest::new("zoom.get", json!({"path": "/meetings/1"}));
        assert_eq!(effects.perform(&ctx, &hit).await.unwrap()["email"], "a@b.c");
        assert_eq!(effects.perform(&ctx, &miss).await.unwrap(), json!({}));
    }

    #[tokio::test]
    async fn keeps_state_per_rule() {
        let effects = RecordingEffects::default();
        let ctx = context();
        let set = EffectRequest::new("state.set", json!({"key": "k", "value": 3}));
        effects.perform(&ctx, &set).await.unwrap();
        let get = EffectRequest::new("state.get", json!({"key": "k"}));
        assert_eq!(effects.perform(&ctx, &get).await.unwrap(), json!(3));
        assert_eq!(effects.state("r", "k"), Some(json!(3)));
        assert_eq!(effects.state("other", "k"), None);
    }
}
