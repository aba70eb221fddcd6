//! The effects a script can call, by name: one enum, its names as records,
//! journals and error messages write them (`slack.post`), and what each
//! name implies (the capability it needs, whether it changes the world,
//! whether repeating it after a crash is harmless).

use std::fmt;

/// One effect a script can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EffectName {
    ZoomGet,
    ZoomPaginate,
    ZoomPost,
    ZoomPatch,
    ZoomPut,
    ZoomDelete,
    ZoomDownload,
    SlackPost,
    SlackWebhook,
    EmailSend,
    HttpRequest,
    StateGet,
    StateSet,
    /// The clock, recorded so a replayed run reads the same time.
    Now,
}

impl EffectName {
    /// Every effect, in the order lists show them.
    pub const ALL: [EffectName; 14] = [
        EffectName::ZoomGet,
        EffectName::ZoomPaginate,
        EffectName::ZoomPost,
        EffectName::ZoomPatch,
        EffectName::ZoomPut,
        EffectName::ZoomDelete,
        EffectName::ZoomDownload,
        EffectName::SlackPost,
        EffectName::SlackWebhook,
        EffectName::EmailSend,
        EffectName::HttpRequest,
        EffectName::StateGet,
        EffectName::StateSet,
        EffectName::Now,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EffectName::ZoomGet => "zoom.get",
            EffectName::ZoomPaginate => "zoom.paginate",
            EffectName::ZoomPost => "zoom.post",
            EffectName::ZoomPatch => "zoom.patch",
            EffectName::ZoomPut => "zoom.put",
            EffectName::ZoomDelete => "zoom.delete",
            EffectName::ZoomDownload => "zoom.download",
            EffectName::SlackPost => "slack.post",
            EffectName::SlackWebhook => "slack.webhook",
            EffectName::EmailSend => "email.send",
            EffectName::HttpRequest => "http.request",
            EffectName::StateGet => "state.get",
            EffectName::StateSet => "state.set",
            EffectName::Now => "now",
        }
    }

    /// The effect [`EffectName::as_str`] names.
    pub fn from_name(name: &str) -> Option<EffectName> {
        EffectName::ALL
            .into_iter()
            .find(|effect| effect.as_str() == name)
    }

    /// An effect's name as a metric label, without an allocation for the known ones.
    pub fn metric_label(name: &str) -> metrics::SharedString {
        match EffectName::from_name(name) {
            Some(known) => known.as_str().into(),
            None => name.to_string().into(),
        }
    }

    /// The capability (as `allow:` names it) a rule needs to call it.
    pub fn capability(self) -> Option<&'static str> {
        match self {
            EffectName::ZoomGet | EffectName::ZoomPaginate => Some("zoom.read"),
            EffectName::ZoomPost
            | EffectName::ZoomPatch
            | EffectName::ZoomPut
            | EffectName::ZoomDelete => Some("zoom.write"),
            EffectName::ZoomDownload => Some("zoom.download"),
            EffectName::SlackPost | EffectName::SlackWebhook => Some("slack"),
            EffectName::EmailSend => Some("email"),
            EffectName::HttpRequest => Some("http"),
            EffectName::StateGet | EffectName::StateSet | EffectName::Now => None,
        }
    }

    /// Whether it changes the world: reads of state and the clock do not.
    pub fn is_external(self) -> bool {
        !matches!(self, EffectName::StateGet | EffectName::Now)
    }

    /// Whether performing it again, after a crash left it unknown whether it
    /// happened, does no harm whatever the rule says: reads of Zoom, rule
    /// state and the clock; writing rule state (the resumed run writes what
    /// it read again); a download (the file is written again in place).
    pub fn is_repeatable(self) -> bool {
        matches!(
            self,
            EffectName::ZoomGet
                | EffectName::ZoomPaginate
                | EffectName::ZoomDownload
                | EffectName::StateGet
                | EffectName::StateSet
                | EffectName::Now
        )
    }
}

impl fmt::Display for EffectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names, for places that match or list strings (`rules:` checks).
pub const EFFECT_NAMES: [&str; EffectName::ALL.len()] = {
    let mut names = [""; EffectName::ALL.len()];
    let mut index = 0;
    while index < names.len() {
        names[index] = EffectName::ALL[index].as_str();
        index += 1;
    }
    names
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for effect in EffectName::ALL {
            assert_eq!(EffectName::from_name(effect.as_str()), Some(effect));
        }
        assert_eq!(EffectName::from_name("zoom.teleport"), None);
        assert_eq!(EFFECT_NAMES[7], "slack.post");
    }

    #[test]
    fn each_effect_says_what_it_needs() {
        assert_eq!(EffectName::ZoomDelete.capability(), Some("zoom.write"));
        assert_eq!(EffectName::StateSet.capability(), None);
        assert!(EffectName::StateSet.is_external());
        assert!(!EffectName::StateGet.is_external());
        assert!(EffectName::StateSet.is_repeatable());
        assert!(!EffectName::SlackPost.is_repeatable());
    }
}
