//! A real SMTP server in-process: it speaks enough of RFC 5321 (EHLO, MAIL, RCPT,
//! DATA, RSET, NOOP, QUIT, pipelining) for any client, keeps what it receives, and can
//! refuse recipients (550) or whole sessions (421) on demand.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent, headers and body (dot-unstuffed).
    pub data: String,
    pub at: Instant,
}

impl Mail {
    /// The value of header `name` (unfolded), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let parsed = mail_parser::MessageParser::default().parse(self.data.as_bytes())?;
        parsed
            .header_raw(name)
            .map(|v| v.replace("\r\n", "").trim().to_owned())
    }

    /// The decoded text part.
    pub fn text(&self) -> String {
        mail_parser::MessageParser::default()
            .parse(self.data.as_bytes())
            .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
            .unwrap_or_default()
    }

    /// The decoded HTML part.
    pub fn html(&self) -> String {
        mail_parser::MessageParser::default()
            .parse(self.data.as_bytes())
            .and_then(|m| m.body_html(0).map(|t| t.into_owned()))
            .unwrap_or_default()
    }

    /// The decoded display name of `From`.
    pub fn from_name(&self) -> String {
        mail_parser::MessageParser::default()
            .parse(self.data.as_bytes())
            .and_then(|m| {
                m.from()
                    .and_then(|a| a.first())
                    .and_then(|a| a.name().map(str::to_owned))
            })
            .unwrap_or_default()
    }

    /// The decoded subject.
    pub fn subject(&self) -> String {
        mail_parser::MessageParser::default()
            .parse(self.data.as_bytes())
            .and_then(|m| m.subject().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    mails: Vec<Mail>,
    /// Sessions to refuse with 421 before anything else.
    refuse_sessions: usize,
    /// Recipients (substrings) refused with 550.
    reject: Vec<String>,
    sessions: usize,
}

/// The SMTP sink.
#[derive(Clone)]
pub struct SmtpSink {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl SmtpSink {
    /// Listens on a free loopback port.
    pub async fn start() -> std::io::Result<SmtpSink> {
        SmtpSink::start_on("127.0.0.1:0").await
    }

    /// Listens on `addr`.
    pub async fn start_on(addr: &str) -> std::io::Result<SmtpSink> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = Arc::clone(&inner);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let _ = session(stream, state).await;
                });
            }
        });
        Ok(SmtpSink { addr, inner })
    }

    /// `smtp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.lock().mails.clone()
    }

    /// Refuses recipients containing `pattern` with `550 5.1.1`.
    pub fn reject(&self, pattern: &str) {
        self.lock().reject.push(pattern.to_owned());
    }

    /// Refuses the next `n` sessions with `421 4.3.2` (a transient failure).
    pub fn refuse_sessions(&self, n: usize) {
        self.lock().refuse_sessions = n;
    }

    pub fn sessions(&self) -> usize {
        self.lock().sessions
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn session(stream: TcpStream, state: Arc<Mutex<Inner>>) -> std::io::Result<()> {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let refuse = {
        let mut s = lock();
        s.sessions += 1;
        if s.refuse_sessions > 0 {
            s.refuse_sessions -= 1;
            true
        } else {
            false
        }
    };
    if refuse {
        write
            .write_all(b"421 4.3.2 service not available, try later\r\n")
            .await?;
        return Ok(());
    }
    write.write_all(b"220 fake-smtp ESMTP ready\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-fake-smtp\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760\r\n"
        } else if upper.starts_with("HELO") {
            b"250 fake-smtp\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&cmd[10..]);
            to.clear();
            b"250 2.1.0 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = address(&cmd[8..]);
            if lock().reject.iter().any(|p| rcpt.contains(p.as_str())) {
                b"550 5.1.1 mailbox unavailable\r\n"
            } else {
                to.push(rcpt);
                b"250 2.1.5 ok\r\n"
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                b"554 5.5.1 no valid recipients\r\n"
            } else {
                write
                    .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(unstuffed);
                }
                lock().mails.push(Mail {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                    at: Instant::now(),
                });
                b"250 2.0.0 queued\r\n"
            }
        } else if upper == "RSET" {
            to.clear();
            b"250 2.0.0 ok\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 ok\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

fn address(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg
        .strip_prefix('<')
        .and_then(|a| a.split('>').next())
        .unwrap_or(arg);
    inner.to_owned()
}
