//! Zoom accounts: those `zoomwire.yaml` lists plus the one the environment
//! defines (named `default`, from `ZOOM_ACCOUNT_ID`, `ZOOM_CLIENT_ID`,
//! `ZOOM_CLIENT_SECRET` and `ZOOM_SUBSCRIPTION_ID`, which override the file's
//! `default` field by field), and the checks `zoomwire run` adds on them.

use secrecy::SecretString;

use super::DEFAULT_ACCOUNT;
use super::ZoomAccount;
use super::errors::ConfigError;
use super::file::FileAccount;
use super::resolve::{Key, Resolver, yaml_key};
use super::values::{parse_identifier, parse_name, parse_subscription_id};

/// An account as declared, complete or not (for the daemon's checks).
#[derive(Debug, Clone)]
pub(super) struct DeclaredAccount {
    pub name: String,
    pub has_subscription: bool,
}

/// The environment variables that define the account named `default`.
const ACCOUNT_VARS: [&str; 4] = [
    "ZOOM_ACCOUNT_ID",
    "ZOOM_CLIENT_ID",
    "ZOOM_CLIENT_SECRET",
    "ZOOM_SUBSCRIPTION_ID",
];

/// Accounts from the file plus the one the environment defines; incomplete
/// ones are reported and left out of the settings.
pub(super) fn resolve_accounts(
    r: &mut Resolver,
    file_accounts: &[FileAccount],
) -> (Vec<ZoomAccount>, Vec<DeclaredAccount>) {
    let empty = FileAccount::default();
    let mut drafts: Vec<(String, &FileAccount)> = Vec::new();
    for (index, account) in file_accounts.iter().enumerate() {
        let name_key = yaml_key(format!("accounts[{index}].name"));
        let name = match r.raw(&name_key, account.name.as_ref()) {
            None => DEFAULT_ACCOUNT.to_string(),
            Some(_) => match r.get(&name_key, account.name.as_ref(), parse_name) {
                Some(name) => name,
                None => continue,
            },
        };
        if drafts.iter().any(|(other, _)| *other == name) {
            let origin = r.yaml_name.clone();
            r.fail(
                &name_key,
                format!("another account is already named `{name}`"),
                Some(origin),
            );
            continue;
        }
        drafts.push((name, account));
    }
    let env_defines_default = ACCOUNT_VARS.iter().any(|var| r.env_defined(var));
    if env_defines_default && !drafts.iter().any(|(name, _)| name == DEFAULT_ACCOUNT) {
        drafts.insert(0, (DEFAULT_ACCOUNT.to_string(), &empty));
    }
    let mut accounts = Vec::new();
    let mut declared = Vec::new();
    for (name, file) in drafts {
        let (account, has_subscription) = resolve_account(r, &name, file);
        declared.push(DeclaredAccount {
            name,
            has_subscription,
        });
        accounts.extend(account);
    }
    (accounts, declared)
}

fn resolve_account(
    r: &mut Resolver,
    name: &str,
    file: &FileAccount,
) -> (Option<ZoomAccount>, bool) {
    let is_default = name == DEFAULT_ACCOUNT;
    let key = |env: &'static str, field: &str| Key {
        env: is_default.then_some(env),
        yaml: format!("accounts[{name}].{field}"),
    };
    let account_id = r.require(
        &key(ACCOUNT_VARS[0], "account_id"),
        file.account_id.as_ref(),
        parse_identifier,
    );
    let client_id = r.require(
        &key(ACCOUNT_VARS[1], "client_id"),
        file.client_id.as_ref(),
        parse_identifier,
    );
    let secret_key = key(ACCOUNT_VARS[2], "client_secret");
    let client_secret = r.require(&secret_key, file.client_secret.as_ref(), |t| {
        Ok(SecretString::from(t))
    });
    let subscription_key = key(ACCOUNT_VARS[3], "subscription_id");
    let has_subscription = r
        .raw(&subscription_key, file.subscription_id.as_ref())
        .is_some();
    let subscription_id = r.get(
        &subscription_key,
        file.subscription_id.as_ref(),
        parse_subscription_id,
    );
    let account = match (account_id, client_id, client_secret) {
        (Some(account_id), Some(client_id), Some(client_secret)) => Some(ZoomAccount {
            name: name.to_string(),
            account_id,
            client_id,
            client_secret,
            subscription_id,
        }),
        _ => None,
    };
    (account, has_subscription)
}

/// What `zoomwire run` needs beyond valid settings.
pub(super) fn daemon_errors(
    declared: &[DeclaredAccount],
    webhook_enabled: bool,
) -> Vec<ConfigError> {
    let account_key = |name: &str, var: &str, field: &str| ConfigError {
        env: (name == DEFAULT_ACCOUNT).then(|| var.to_string()),
        yaml_key: Some(format!("accounts[{name}].{field}")),
        origin: None,
        message: String::new(),
    };
    if declared.is_empty() {
        let fields = [
            "account_id",
            "client_id",
            "client_secret",
            "subscription_id",
        ];
        let needed = if webhook_enabled { 3 } else { 4 };
        return ACCOUNT_VARS
            .iter()
            .zip(fields)
            .take(needed)
            .map(|(var, field)| ConfigError {
                message: "missing: `zoomwire run` needs at least one Zoom account".into(),
                ..account_key(DEFAULT_ACCOUNT, var, field)
            })
            .collect();
    }
    if webhook_enabled {
        return Vec::new();
    }
    declared
        .iter()
        .filter(|account| !account.has_subscription)
        .map(|account| ConfigError {
            message: "missing: `zoomwire run` receives events through the account's WebSocket subscription \
                      (or set ZOOM_WEBHOOK_SECRET_TOKEN to receive them by webhook)"
                .into(),
            ..account_key(&account.name, ACCOUNT_VARS[3], "subscription_id")
        })
        .collect()
}
