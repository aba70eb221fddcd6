//! Zoom's event types: the names Zoom puts in an event's `event` field, for
//! the Meetings (meetings, recordings, webinars), Users and Accounts event
//! subscriptions. The list is what `zoomwire check` compares a rule's `on:`
//! with: a name that is not here is most often a typo, and the nearest one
//! is suggested. Zoom adds event types from time to time, so a name missing
//! here is only a warning, and a rule listening to it still runs.

/// Every event type zoomwire knows Zoom to send, sorted.
pub const EVENT_TYPES: &[&str] = &[
    "account.created",
    "account.disassociated",
    "account.lock_settings_updated",
    "account.settings_updated",
    "account.updated",
    "account.vanity_url_approved",
    "account.vanity_url_rejected",
    "endpoint.url_validation",
    "group.admin_added",
    "group.admin_deleted",
    "group.created",
    "group.deleted",
    "group.lock_settings_updated",
    "group.member_added",
    "group.member_deleted",
    "group.settings_updated",
    "group.updated",
    "meeting.aic_transcript_completed",
    "meeting.alert",
    "meeting.chat_message_file_sent",
    "meeting.chat_message_sent",
    "meeting.created",
    "meeting.deleted",
    "meeting.ended",
    "meeting.live_streaming_started",
    "meeting.live_streaming_stopped",
    "meeting.participant_admitted",
    "meeting.participant_feedback",
    "meeting.participant_jbh_joined",
    "meeting.participant_jbh_waiting",
    "meeting.participant_joined",
    "meeting.participant_joined_breakout_room",
    "meeting.participant_joined_waiting_room",
    "meeting.participant_left",
    "meeting.participant_left_breakout_room",
    "meeting.participant_left_waiting_room",
    "meeting.participant_phone_callout_accepted",
    "meeting.participant_phone_callout_missed",
    "meeting.participant_phone_callout_rejected",
    "meeting.participant_phone_callout_ringing",
    "meeting.participant_put_in_waiting_room",
    "meeting.participant_role_changed",
    "meeting.participant_room_system_callout_accepted",
    "meeting.participant_room_system_callout_failed",
    "meeting.participant_room_system_callout_missed",
    "meeting.participant_room_system_callout_rejected",
    "meeting.participant_room_system_callout_ringing",
    "meeting.permanently_deleted",
    "meeting.recovered",
    "meeting.registration_approved",
    "meeting.registration_cancelled",
    "meeting.registration_created",
    "meeting.registration_denied",
    "meeting.risk_alert",
    "meeting.sharing_ended",
    "meeting.sharing_started",
    "meeting.started",
    "meeting.summary_completed",
    "meeting.summary_deleted",
    "meeting.summary_recovered",
    "meeting.summary_shared",
    "meeting.summary_trashed",
    "meeting.summary_updated",
    "meeting.updated",
    "recording.archive_files_completed",
    "recording.batch_deleted",
    "recording.batch_recovered",
    "recording.batch_trashed",
    "recording.cloud_storage_usage_updated",
    "recording.completed",
    "recording.deleted",
    "recording.paused",
    "recording.recovered",
    "recording.registration_approved",
    "recording.registration_created",
    "recording.registration_denied",
    "recording.renamed",
    "recording.resumed",
    "recording.started",
    "recording.stopped",
    "recording.transcript_completed",
    "recording.trashed",
    "user.activated",
    "user.created",
    "user.deactivated",
    "user.deleted",
    "user.disassociated",
    "user.invitation_accepted",
    "user.personal_notes_updated",
    "user.presence_status_updated",
    "user.settings_updated",
    "user.signed_in",
    "user.signed_out",
    "user.tsp_created",
    "user.tsp_deleted",
    "user.tsp_updated",
    "user.updated",
    "webinar.alert",
    "webinar.chat_message_file_sent",
    "webinar.chat_message_sent",
    "webinar.converted_to_meeting",
    "webinar.created",
    "webinar.deleted",
    "webinar.ended",
    "webinar.participant_feedback",
    "webinar.participant_joined",
    "webinar.participant_left",
    "webinar.participant_role_changed",
    "webinar.permanently_deleted",
    "webinar.recovered",
    "webinar.registration_approved",
    "webinar.registration_cancelled",
    "webinar.registration_created",
    "webinar.registration_denied",
    "webinar.sharing_ended",
    "webinar.sharing_started",
    "webinar.started",
    "webinar.updated",
];

/// Whether Zoom sends events of this type.
pub fn is_event_type(name: &str) -> bool {
    EVENT_TYPES.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_without_duplicates_and_well_formed() {
        for pair in EVENT_TYPES.windows(2) {
            assert!(pair[0] < pair[1], "{} before {}", pair[0], pair[1]);
        }
        for name in EVENT_TYPES {
            let (object, action) = name.split_once('.').expect("object.action");
            assert!(!object.is_empty() && !action.is_empty(), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
                "{name}"
            );
        }
    }

    #[test]
    fn knows_the_types_the_examples_and_the_simulator_use() {
        for name in [
            "meeting.started",
            "meeting.ended",
            "meeting.participant_joined",
            "meeting.participant_left",
            "recording.completed",
            "user.created",
            "endpoint.url_validation",
        ] {
            assert!(is_event_type(name), "{name}");
        }
        assert!(!is_event_type("meeting.endd"));
        assert!(!is_event_type("schedule"));
    }
}
