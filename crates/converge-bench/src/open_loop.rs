//! The open-loop HTTP load of the `pg-serve` scenario: requests scheduled at a fixed rate,
//! sent over a fixed set of keep-alive connections to `converge serve` on loopback, each
//! timed from its scheduled send time (so a stall delays every request behind it and shows
//! in the percentiles), and the latencies per endpoint as JSON lines.
//!
//! It speaks just enough HTTP/1.1 for the server's answers (a status line, headers,
//! `Content-Length` bodies), so that what is timed is the server, not a client library.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::BenchError;
use crate::pg_serve::{CONNECTIONS, DRAIN_MAX, durable, round};

/// One request of a load.
pub(crate) struct Request {
    pub(crate) method: &'static str,
    pub(crate) path: String,
    pub(crate) token: String,
    pub(crate) body: Option<&'static [u8]>,
    pub(crate) endpoint: usize,
    /// For a submission: where to record the run once accepted.
    pub(crate) submitted: Option<(Arc<Mutex<Vec<String>>>, String)>,
}

/// An open-loop load: requests scheduled at a fixed rate, sent on a fixed set of keep-alive
/// connections, each timed from its scheduled send time.
pub(crate) struct Load {
    pub(crate) address: SocketAddr,
    pub(crate) rate: f64,
    pub(crate) start: Instant,
    pub(crate) measured_from: Instant,
    pub(crate) end: Instant,
}

impl Load {
    pub(crate) fn new(
        address: SocketAddr,
        rate: f64,
        start: Instant,
        measured_from: Instant,
        end: Instant,
    ) -> Load {
        Load {
            address,
            rate,
            start,
            measured_from,
            end,
        }
    }

    pub(crate) async fn run(
        self,
        request: impl Fn(u64) -> Request + Send + 'static,
    ) -> Result<Latencies, BenchError> {
        let (schedule, queue) = mpsc::unbounded_channel::<(Instant, Request)>();
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let latencies = Arc::new(Mutex::new(Latencies::default()));
        let senders: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let queue = queue.clone();
                let latencies = latencies.clone();
                let (address, measured_from) = (self.address, self.measured_from);
                tokio::spawn(async move {
                    let mut connection: Option<Connection> = None;
                    loop {
                        let next = queue.lock().await.recv().await;
                        let Some((at, request)) = next else {
                            return;
                        };
                        let status = send(&mut connection, address, &request).await;
                        if at >= measured_from {
                            let elapsed = at.elapsed();
                            let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner());
                            latencies.record(request.endpoint, elapsed, status);
                        }
                    }
                })
            })
            .collect();
        let period = Duration::from_secs_f64(1.0 / self.rate);
        let mut scheduled = 0u64;
        for i in 0u64.. {
            let at = self.start + period.mul_f64(i as f64);
            if at >= self.end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            if at >= self.measured_from {
                scheduled += 1;
            }
            if schedule.send((at, request(i))).is_err() {
                return Err(durable("the load's senders stopped".to_owned()));
            }
        }
        drop(schedule);
        let drained = tokio::time::timeout(DRAIN_MAX, futures_join(senders)).await;
        let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if drained.is_err() {
            // Requests never answered are errors, as many as are missing.
            let missing = scheduled.saturating_sub(latencies.count() as u64);
            latencies.unanswered += missing;
        }
        latencies.scheduled = scheduled;
        latencies.last_done = Some(Instant::now().saturating_duration_since(self.measured_from));
        Ok(latencies)
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

/// Sends `request` on the connection, opening one if there is none; whether it answered
/// 2xx. A connection that failed is dropped, and the next request opens another.
/// Sends `request`; the status answered, or [`NO_ANSWER`].
async fn send(connection: &mut Option<Connection>, address: SocketAddr, request: &Request) -> u16 {
    if connection.is_none() {
        *connection = Connection::open(address).await.ok();
    }
    let Some(open) = connection.as_mut() else {
        return NO_ANSWER;
    };
    match open
        .send(
            request.method,
            &request.path,
            Some(&request.token),
            request.body,
        )
        .await
    {
        Ok(status) => {
            let ok = (200..300).contains(&status);
            if ok && let Some((recent, id)) = &request.submitted {
                recent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id.clone());
            }
            status
        }
        Err(_) => {
            *connection = None;
            NO_ANSWER
        }
    }
}

/// An HTTP/1.1 keep-alive connection: a request, then its whole response, at a time. The
/// server answers with `Content-Length`; anything else is an error here.
pub(crate) struct Connection {
    pub(crate) stream: BufReader<TcpStream>,
    pub(crate) body: Vec<u8>,
}

impl Connection {
    pub(crate) async fn open(address: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream: BufReader::new(stream),
            body: Vec::new(),
        })
    }

    /// Sends a request and reads its response; the response's status.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> std::io::Result<u16> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/yaml\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        if let Some(body) = body {
            stream.write_all(body).await?;
        }
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad(&format!("not an HTTP status line: {line:?}")))?;
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(bad("the connection closed in the headers"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or_else(|| bad("a response without Content-Length"))?;
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(status)
    }
}

fn bad(message: &str) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, message.to_owned())
}

/// The status recorded for a request that got no answer (the connection failed).
pub(crate) const NO_ANSWER: u16 = 0;

/// Latencies of one load, per endpoint, in microseconds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Latencies {
    /// `(endpoint, latency_us, status)`, the status [`NO_ANSWER`] when none came.
    pub(crate) samples: Vec<(usize, u64, u16)>,
    /// Requests scheduled in the measured window.
    pub(crate) scheduled: u64,
    /// Requests not answered before the drain ended.
    pub(crate) unanswered: u64,
    /// From the window's start until the last answer.
    pub(crate) last_done: Option<Duration>,
}

impl Latencies {
    pub(crate) fn record(&mut self, endpoint: usize, latency: Duration, status: u16) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.samples.push((endpoint, us, status));
    }

    pub(crate) fn count(&self) -> usize {
        self.samples.len()
    }

    /// The samples of one endpoint.
    pub(crate) fn only(&self, endpoint: usize) -> Latencies {
        Latencies {
            samples: self
                .samples
                .iter()
                .filter(|sample| sample.0 == endpoint)
                .copied()
                .collect(),
            scheduled: 0,
            unanswered: 0,
            last_done: self.last_done,
        }
    }

    pub(crate) fn json_line(
        &self,
        endpoint: &str,
        target_rps: f64,
        window: Duration,
        beside: &serde_json::Value,
    ) -> String {
        let mut sorted: Vec<u64> = self.samples.iter().map(|sample| sample.1).collect();
        sorted.sort_unstable();
        let at = |quantile: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let index = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
            round(sorted[index - 1] as f64 / 1000.0, 2)
        };
        // Every answer that is not 2xx, by status ("none": the connection failed).
        let mut refused: std::collections::BTreeMap<String, u64> = Default::default();
        for (_, _, status) in &self.samples {
            if !(200..300).contains(status) {
                let status = match *status {
                    NO_ANSWER => "none".to_owned(),
                    status => status.to_string(),
                };
                *refused.entry(status).or_default() += 1;
            }
        }
        if self.unanswered > 0 {
            *refused.entry("none".to_owned()).or_default() += self.unanswered;
        }
        let errors: u64 = refused.values().sum();
        let elapsed = self.last_done.unwrap_or(window).max(window);
        let mut line = serde_json::json!({
            "scenario": "pg-serve",
            "endpoint": endpoint,
            "target_rps": target_rps,
            "rps": round(self.samples.len() as f64 / elapsed.as_secs_f64(), 1),
            "requests": self.samples.len(),
            "errors": errors,
            "errors_by_status": refused,
            "p50_ms": at(0.50),
            "p90_ms": at(0.90),
            "p99_ms": at(0.99),
            "max_ms": at(1.0),
            "window_s": round(window.as_secs_f64(), 1),
        });
        if let (Some(line), Some(beside)) = (line.as_object_mut(), beside.as_object()) {
            line.extend(beside.clone());
        }
        line.to_string()
    }
}
