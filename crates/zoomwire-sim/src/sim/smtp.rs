//! A tiny SMTP receiver on loopback: the local mail sink of `zoomwire demo`,
//! so that `email::send` goes over real SMTP without a relay or credentials.
//!
//! It speaks the plain core of RFC 5321 that a client such as lettre needs:
//! the greeting, `EHLO`/`HELO`, `MAIL FROM`, `RCPT TO`, `DATA` (with the
//! end-of-data dot and dot-unstuffing), `RSET`, `NOOP` and `QUIT`, answering
//! out-of-order commands with 503 and unknown ones with 500; the recipients
//! `reject-permanent@...` and `reject-temporary@...` are refused (550, 451).
//! No TLS and no AUTH are offered, so it is only for
//! `SMTP_URL=smtp://127.0.0.1:PORT?tls=none`. Every accepted message is kept
//! as a [`ReceivedMail`]. The demo sends through it, and so do the plain
//! email tests; the tests of TLS and AUTH use a full server (aiosmtpd).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Longest command line accepted (RFC 5321 says 512 octets; be lenient).
const MAX_LINE: usize = 4096;
/// Largest message accepted, advertised with `SIZE`.
const MAX_MESSAGE: usize = 10 * 1024 * 1024;
/// A client silent for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const HOSTNAME: &str = "zoomwire-sink";

/// One message the sink accepted.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`), empty for the null sender.
    pub from: String,
    /// The envelope recipients (`RCPT TO`).
    pub to: Vec<String>,
    /// The message as transmitted (headers and body), dot-unstuffed, CRLF line ends.
    pub data: String,
}

impl ReceivedMail {
    /// The first header called `name` (case-insensitive), unfolded, with
    /// RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`) decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(found) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    found.push(' ');
                    found.push_str(line.trim());
                    continue;
                }
                break;
            }
            if let Some((key, rest)) = line.split_once(':')
                && key.trim().eq_ignore_ascii_case(name)
            {
                value = Some(rest.trim().to_string());
            }
        }
        value.map(|v| decode_words(&v))
    }

    /// The `Subject` header.
    pub fn subject(&self) -> Option<String> {
        self.header("subject")
    }
}

/// Decodes the RFC 2047 encoded words of a header value.
fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut previous_was_word = false;
    for (index, token) in value.split(' ').enumerate() {
        let decoded = decode_word(token);
        // The space between two encoded words is not part of the text
        // (RFC 2047 section 6.2); every other space is.
        if index > 0 && !(previous_was_word && decoded.is_some()) {
            out.push(' ');
        }
        previous_was_word = decoded.is_some();
        out.push_str(decoded.as_deref().unwrap_or(token));
    }
    out
}

/// One `=?charset?B|Q?text?=` word (UTF-8 and ASCII charsets only).
fn decode_word(token: &str) -> Option<String> {
    let inner = token.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut parts = inner.splitn(3, '?');
    let charset = parts.next()?.to_ascii_lowercase();
    let encoding = parts.next()?.to_ascii_lowercase();
    let text = parts.next()?;
    if !matches!(charset.as_str(), "utf-8" | "us-ascii") {
        return None;
    }
    let bytes = match encoding.as_str() {
        "b" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
        "q" => decode_q(text)?,
        _ => return None,
    };
    String::from_utf8(bytes).ok()
}

fn decode_q(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// A running sink. Dropping it stops accepting connections.
pub struct SmtpSink {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<ReceivedMail>>>,
    received: watch::Sender<usize>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Starts a sink on `addr` (`127.0.0.1:0` for a free port).
pub async fn start_smtp_sink(addr: SocketAddr) -> std::io::Result<SmtpSink> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let sink = SmtpSink {
        addr,
        messages: Arc::default(),
        received: watch::Sender::new(0),
        shutdown: CancellationToken::new(),
    };
    let shared = Shared {
        messages: sink.messages.clone(),
        received: sink.received.clone(),
    };
    tokio::spawn(accept_loop(listener, shared, sink.shutdown.clone()));
    Ok(sink)
}

impl SmtpSink {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `SMTP_URL` for this sink: plain SMTP, no TLS.
    pub fn url(&self) -> String {
        format!("smtp://{}?tls=none", self.addr)
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.messages).clone()
    }

    /// Waits until at least `count` messages arrived; false on timeout.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> bool {
        let mut received = self.received.subscribe();
        tokio::time::timeout(timeout, received.wait_for(|n| *n >= count))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops accepting connections; open sessions end at their next command.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only follows a panic in another holder; the list is still consistent.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every session shares with the sink.
#[derive(Clone)]
struct Shared {
    messages: Arc<Mutex<Vec<ReceivedMail>>>,
    received: watch::Sender<usize>,
}

impl Shared {
    fn keep(&self, mail: ReceivedMail) {
        let count = {
            let mut messages = lock(&self.messages);
            messages.push(mail);
            messages.len()
        };
        self.received.send_replace(count);
    }
}

async fn accept_loop(listener: TcpListener, shared: Shared, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(error = %error, "smtp sink cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = serve_connection(stream, &shared) => {
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "smtp sink session ended");
                    }
                }
            }
        });
    }
}

async fn serve_connection(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut session = Session::default();
    reply(&mut write, &format!("220 {HOSTNAME} ESMTP ready")).await?;
    loop {
        let line = match tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader)).await {
            Err(_) => {
                reply(&mut write, "421 idle for too long, closing").await?;
                return Ok(());
            }
            Ok(line) => line?,
        };
        let Some(line) = line else {
            return Ok(());
        };
        let Line::Complete(line) = line else {
            reply(&mut write, "500 line too long").await?;
            continue;
        };
        match session.command(&line) {
            Step::Reply(text) => reply(&mut write, &text).await?,
            Step::Quit => {
                reply(&mut write, &format!("221 {HOSTNAME} closing")).await?;
                return Ok(());
            }
            Step::Data => {
                reply(&mut write, "354 end data with <CR><LF>.<CR><LF>").await?;
                match read_data(&mut reader).await? {
                    Some(data) => {
                        let mail = session.take_mail(data);
                        shared.keep(mail);
                        reply(&mut write, "250 ok: message accepted").await?;
                    }
                    None => {
                        session.reset();
                        reply(&mut write, "552 message too large").await?;
                    }
                }
            }
        }
    }
}

async fn reply<W: AsyncWrite + Unpin>(write: &mut W, text: &str) -> std::io::Result<()> {
    write.write_all(text.as_bytes()).await?;
    write.write_all(b"\r\n").await?;
    write.flush().await
}

/// A line read from the client.
#[derive(Debug, PartialEq)]
enum Line {
    /// Without its line end.
    Complete(String),
    /// Longer than [`MAX_LINE`]: skipped up to its end.
    TooLong,
}

/// Reads one line; `None` at the end of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Line>> {
    let mut buffer = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buffer)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if !buffer.ends_with(b"\n") {
        if read < MAX_LINE {
            // The stream ended in the middle of a line.
            return Ok(None);
        }
        skip_to_line_end(reader).await?;
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(Line::Complete(
        String::from_utf8_lossy(trim_line_end(&buffer)).into_owned(),
    )))
}

async fn skip_to_line_end<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<()> {
    loop {
        let mut buffer = Vec::new();
        let read = (&mut *reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buffer)
            .await?;
        if read == 0 || buffer.ends_with(b"\n") {
            return Ok(());
        }
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads the message up to the lone dot, undoing dot-stuffing; `None` when
/// it is larger than [`MAX_MESSAGE`] (read to its end all the same).
async fn read_data<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut data: Vec<u8> = Vec::new();
    let mut too_large = false;
    loop {
        let mut line = Vec::new();
        let read = reader.read_until(b'\n', &mut line).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside DATA",
            ));
        }
        let content = trim_line_end(&line);
        if content == b"." {
            break;
        }
        // Dot-unstuffing: a leading dot was doubled by the client.
        let content = content.strip_prefix(b".").unwrap_or(content);
        if data.len() + content.len() + 2 > MAX_MESSAGE {
            too_large = true;
            data.clear();
        }
        if !too_large {
            data.extend_from_slice(content);
            data.extend_from_slice(b"\r\n");
        }
    }
    Ok((!too_large).then(|| String::from_utf8_lossy(&data).into_owned()))
}

/// What the session loop does next.
#[derive(Debug, PartialEq)]
enum Step {
    Reply(String),
    Data,
    Quit,
}

/// The state of one SMTP session: greeted, and the transaction in progress.
#[derive(Debug, Default)]
struct Session {
    greeted: bool,
    from: Option<String>,
    to: Vec<String>,
}

impl Session {
    fn command(&mut self, line: &str) -> Step {
        let (verb, argument) = match line.split_once(' ') {
            Some((verb, argument)) => (verb, argument.trim()),
            None => (line.trim(), ""),
        };
        let reply = |text: &str| Step::Reply(text.to_string());
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                self.greeted = true;
                self.reset();
                Step::Reply(format!(
                    "250-{HOSTNAME} greets {argument}\r\n250-8BITMIME\r\n250-SIZE {MAX_MESSAGE}\r\n250 HELP"
                ))
            }
            "HELO" => {
                self.greeted = true;
                self.reset();
                Step::Reply(format!("250 {HOSTNAME}"))
            }
            "MAIL" if !self.greeted => reply("503 send EHLO or HELO first"),
            "MAIL" if self.from.is_some() => reply("503 nested MAIL command"),
            "MAIL" => match path_argument(argument, "FROM:") {
                Some(from) => {
                    self.from = Some(from);
                    reply("250 ok")
                }
                None => reply("501 syntax: MAIL FROM:<address>"),
            },
            "RCPT" if self.from.is_none() => reply("503 need MAIL before RCPT"),
            "RCPT" => match path_argument(argument, "TO:").filter(|to| !to.is_empty()) {
                Some(to) => match refusal(&to) {
                    Some(refused) => reply(refused),
                    None => {
                        self.to.push(to);
                        reply("250 ok")
                    }
                },
                None => reply("501 syntax: RCPT TO:<address>"),
            },
            "DATA" if self.to.is_empty() => reply("503 need RCPT before DATA"),
            "DATA" => Step::Data,
            "RSET" => {
                self.reset();
                reply("250 ok")
            }
            "NOOP" => reply("250 ok"),
            "QUIT" => Step::Quit,
            "VRFY" => reply("252 cannot verify, but will accept"),
            _ => reply("500 command not recognized"),
        }
    }

    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }

    fn take_mail(&mut self, data: String) -> ReceivedMail {
        let mail = ReceivedMail {
            from: self.from.take().unwrap_or_default(),
            to: std::mem::take(&mut self.to),
            data,
        };
        self.reset();
        mail
    }
}

/// The answer to a recipient the sink refuses, as a relay would: the local
/// part `reject-permanent` is refused for good (550), `reject-temporary` for
/// now (451), so that tests see both kinds of refusal over real SMTP.
fn refusal(to: &str) -> Option<&'static str> {
    match to.split('@').next() {
        Some("reject-permanent") => Some("550 5.1.1 no such user here"),
        Some("reject-temporary") => Some("451 4.3.0 mailbox busy, try again later"),
        _ => None,
    }
}

/// The address of `FROM:<a@b> SIZE=1` (or `TO:<a@b>`); `None` when malformed.
fn path_argument(argument: &str, prefix: &str) -> Option<String> {
    let head = argument.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = argument[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn commands_out_of_order_are_refused() {
        let mut session = Session::default();
        assert!(
            matches!(session.command("MAIL FROM:<a@x>"), Step::Reply(r) if r.starts_with("503"))
        );
        assert!(matches!(session.command("ehlo client"), Step::Reply(r) if r.starts_with("250-")));
        assert!(matches!(session.command("RCPT TO:<b@x>"), Step::Reply(r) if r.starts_with("503")));
        assert!(matches!(session.command("DATA"), Step::Reply(r) if r.starts_with("503")));
        assert_eq!(
            session.command("MAIL FROM:<a@x> BODY=8BITMIME"),
            Step::Reply("250 ok".into())
        );
        assert!(
            matches!(session.command("MAIL FROM:<a@x>"), Step::Reply(r) if r.starts_with("503"))
        );
        assert!(matches!(session.command("RCPT TO:b@x"), Step::Reply(r) if r.starts_with("501")));
        assert_eq!(
            session.command("rcpt to:<b@x>"),
            Step::Reply("250 ok".into())
        );
        assert_eq!(session.command("DATA"), Step::Data);
        assert_eq!(session.command("RSET"), Step::Reply("250 ok".into()));
        assert!(matches!(session.command("DATA"), Step::Reply(r) if r.starts_with("503")));
        assert_eq!(session.command("NOOP"), Step::Reply("250 ok".into()));
        assert!(matches!(session.command("STARTTLS"), Step::Reply(r) if r.starts_with("500")));
        assert_eq!(session.command("QUIT"), Step::Quit);
    }

    #[test]
    fn the_reject_recipients_are_refused_and_not_kept() {
        let mut session = Session::default();
        session.command("EHLO client");
        session.command("MAIL FROM:<a@x>");
        assert!(
            matches!(session.command("RCPT TO:<reject-permanent@x>"), Step::Reply(r) if r.starts_with("550"))
        );
        assert!(
            matches!(session.command("RCPT TO:<reject-temporary@x>"), Step::Reply(r) if r.starts_with("451"))
        );
        assert!(matches!(session.command("DATA"), Step::Reply(r) if r.starts_with("503")));
        assert_eq!(
            session.command("RCPT TO:<b@x>"),
            Step::Reply("250 ok".into())
        );
        assert_eq!(session.to, ["b@x"]);
    }

    #[test]
    fn addresses_are_read_from_the_angle_brackets() {
        assert_eq!(
            path_argument("FROM:<a@x> SIZE=10", "FROM:"),
            Some("a@x".into())
        );
        assert_eq!(path_argument("from: <>", "FROM:"), Some(String::new()));
        assert_eq!(path_argument("TO:<b@x>", "FROM:"), None);
        assert_eq!(path_argument("FROM:a@x", "FROM:"), None);
        assert_eq!(path_argument("FR", "FROM:"), None);
    }

    #[test]
    fn headers_are_unfolded_and_encoded_words_decoded() {
        let mail = ReceivedMail {
            from: "a@x".into(),
            to: vec!["b@x".into()],
            data: "From: a@x\r\nSubject: =?utf-8?b?TcOkcno=?= report\r\n and more\r\nX-Q: =?utf-8?q?a_b=3Dc?=\r\n\r\nSubject: not a header\r\n".into(),
        };
        assert_eq!(mail.subject().as_deref(), Some("März report and more"));
        assert_eq!(mail.header("x-q").as_deref(), Some("a b=c"));
        let mail = ReceivedMail {
            data: "Subject: Weekly Sync =?utf-8?q?=E2=80=93_M?= =?utf-8?q?=C3=A4rz?= ok\r\n\r\n"
                .into(),
            ..mail
        };
        assert_eq!(mail.subject().as_deref(), Some("Weekly Sync – März ok"));
        assert_eq!(mail.header("to"), None);
    }

    async fn read_reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return text;
            }
        }
    }

    #[tokio::test]
    async fn a_session_over_tcp_is_recorded_with_dots_unstuffed() {
        let sink = start_smtp_sink(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let stream = TcpStream::connect(sink.addr()).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        assert!(read_reply(&mut reader).await.starts_with("220 "));
        let mut say = async |line: &str| {
            write.write_all(line.as_bytes()).await.unwrap();
            read_reply(&mut reader).await
        };
        assert!(say("EHLO test\r\n").await.contains("250 HELP"));
        assert!(
            say("MAIL FROM:<demo@example.com>\r\n")
                .await
                .starts_with("250")
        );
        assert!(
            say("RCPT TO:<host@example.com>\r\n")
                .await
                .starts_with("250")
        );
        assert!(
            say("RCPT TO:<alice@example.com>\r\n")
                .await
                .starts_with("250")
        );
        assert!(say("DATA\r\n").await.starts_with("354"));
        let body = "Subject: Hello\r\n\r\n..leading dot\r\nplain\r\n.\r\n";
        assert!(say(body).await.starts_with("250"));
        assert!(
            say(&format!("NOOP {}\r\n", "x".repeat(MAX_LINE)))
                .await
                .starts_with("500")
        );
        assert!(say("QUIT\r\n").await.starts_with("221"));
        assert!(sink.wait_for(1, Duration::from_secs(2)).await);
        let messages = sink.messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].from, "demo@example.com");
        assert_eq!(messages[0].to, ["host@example.com", "alice@example.com"]);
        assert_eq!(
            messages[0].data,
            "Subject: Hello\r\n\r\n.leading dot\r\nplain\r\n"
        );
        assert_eq!(messages[0].subject().as_deref(), Some("Hello"));
        assert!(sink.url().ends_with("?tls=none"));
    }
}
