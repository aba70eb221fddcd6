//! `zoomwire schema [--config]`: the JSON Schema of a rule file, or with
//! `--config` of `zoomwire.yaml`, from the Rust types serde reads them into.

use std::process::ExitCode;

use super::CommandResult;
use crate::rules::spec::RuleSpec;

/// The schema of a rule file: one rule or a list of rules.
pub fn rule_file_schema() -> serde_json::Value {
    let rule = serde_json::to_value(schemars::schema_for!(RuleSpec)).unwrap_or_default();
    let mut definitions = rule
        .get("$defs")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let mut rule_without_meta = rule.clone();
    if let Some(object) = rule_without_meta.as_object_mut() {
        object.remove("$defs");
        object.remove("$schema");
    }
    if let Some(defs) = definitions.as_object_mut() {
        defs.insert("rule".into(), rule_without_meta);
    }
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "zoomwire rule file",
        "description": "One zoomwire rule, or a list of rules",
        "oneOf": [
            {"$ref": "#/$defs/rule"},
            {"type": "array", "items": {"$ref": "#/$defs/rule"}}
        ],
        "$defs": definitions,
    })
}

/// The schema of `zoomwire.yaml`.
pub fn config_file_schema() -> serde_json::Value {
    serde_json::to_value(crate::config::file_schema()).unwrap_or_default()
}

pub fn run(config: bool) -> CommandResult {
    let schema = if config {
        config_file_schema()
    } else {
        rule_file_schema()
    };
    let text = serde_json::to_string_pretty(&schema).map_err(anyhow::Error::from)?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_describes_rules_and_lists_of_rules() {
        let schema = rule_file_schema();
        let rule = &schema["$defs"]["rule"];
        assert_eq!(rule["additionalProperties"], false);
        assert!(rule["properties"]["on"].is_object());
        assert!(rule["properties"]["do"].is_object());
        assert_eq!(schema["oneOf"][1]["type"], "array");
        let text = schema.to_string();
        assert!(text.contains("\"single\""), "modes are listed");
    }

    #[test]
    fn the_config_schema_has_every_key_and_refuses_unknown_ones() {
        let schema = config_file_schema();
        assert_eq!(schema["title"], "zoomwire.yaml");
        assert_eq!(schema["additionalProperties"], false);
        let keys: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "zoom",
            "accounts",
            "webhook",
            "slack",
            "slack_webhooks",
            "email",
            "data",
            "admin_addr",
            "admin_token",
            "rules",
            "scripts",
            "log_format",
            "websocket",
            "journal",
            "reconcile",
            "shutdown_grace",
            "max_waiting_runs",
            "vars",
            "sandbox",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
        let text = schema.to_string();
        assert!(
            text.contains("ZOOMWIRE_DATA"),
            "descriptions name the variables"
        );
        assert!(
            text.contains("max_operations"),
            "sandbox limits are described"
        );
    }
}
