//! The connection half of the gateway check: every client that talks to
//! the gateway's port is built here, and each new connection it makes is
//! checked once it is established and before any byte goes on it.
//!
//! [`KeyGate::check`] proves who holds the port at one instant; the
//! request it allows connects a moment later. Without this layer the
//! agent's own shell (the gateway's user) could kill the gateway and bind
//! the port in that moment, and receive the gateway key and a run's
//! prompt. [`ConfirmLayer`] wraps reqwest's connector
//! (`ClientBuilder::connector_layer`, reqwest 0.12.28): before the connect
//! it takes what the gate verified ([`KeyGate::before_connect`]: the
//! listening sockets and the gateway's child, from the request's own
//! pre-check when there was one, so a new connection costs two reads of
//! the listeners, not three); after the TCP handshake it reads the port's
//! listeners again ([`KeyGate::confirm`]) and fails the connection unless
//! they are the same sockets and the child is alive. reqwest writes the
//! request only on a connection its connector returned, so a failed one
//! has carried nothing.
//!
//! Why the listener and not the accepted socket: the server's socket may
//! still sit in the accept queue, unowned, when the connect returns, and
//! whoever holds the listener may accept it later, so checking the
//! accepted socket's owner is racy. The listener is the fact that matters:
//! a socket's inode is unique while it lives (and its cookie for ever), so
//! a listener read before and after lived throughout; while a listener
//! surely takes 127.0.0.1
//! (`Listeners::takes_v4`; the gate refuses a set without one) Linux lets
//! no other socket listen where the connection lands (no `SO_REUSEPORT`:
//! the gate refuses a shared port, and hermes-agent 0.19.0 does not set
//! it). So the connection is queued on the verified listener, and only the
//! gateway's child holds that.
//!
//! Pooled keep-alive connections are not checked again: each was checked
//! when made, is the gateway's accepted socket, and dies with it.
//!
//! What a caller sees: the connection error carries the [`Refusal`]
//! ([`refusal_of`]); a foreign holder is the pre-check's own refusal
//! (`agent_unavailable`, one log line per episode), a port that changed
//! to the restarted gateway itself is [`Refusal::Changed`] (retried like a
//! refused connection). Either way one WARN line says a connection was
//! dropped, with the port and the child's pid, never the key.
//!
//! What is left (docs/agent.md, "Gateway link"): a process that may
//! ptrace the gateway (same uid, no Yama restriction) is the gateway as far
//! as any socket check goes. Socket inode numbers come from a 32-bit
//! counter (`get_next_ino`) and recur; the before/after comparison also
//! compares cookies (64-bit, never reused, from `NETLINK_SOCK_DIAG`), so a
//! recurring number is a different socket there, but the `/proc/PID/fd`
//! walk sees inodes only (see `gateway_socket`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::gateway_socket::{KeyGate, Refusal};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client builder for the gateway's loopback API, the only one: never
/// through a proxy (a proxy would see the key and the prompts), no
/// redirects, no root certificates (plain HTTP on loopback; loading the
/// system's CA bundle cost every daemon ~0.3 MiB, BENCHMARKS.md "Idle
/// memory"), and every new connection confirmed by the gate.
pub fn client(gate: &Arc<KeyGate>, connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .connector_layer(ConfirmLayer { gate: gate.clone() })
}

/// The gate's refusal, when a request failed because the gate dropped
/// its connection.
pub fn refusal_of(e: &reqwest::Error) -> Option<Refusal> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refusal>() {
            return Some(r.clone());
        }
        source = s.source();
    }
    None
}

/// Wraps a connector: see the module doc.
#[derive(Clone)]
pub struct ConfirmLayer {
    gate: Arc<KeyGate>,
}

impl<S> tower::Layer<S> for ConfirmLayer {
    type Service = Confirm<S>;

    fn layer(&self, inner: S) -> Confirm<S> {
        Confirm {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// A connector whose connections are confirmed by the gate.
#[derive(Clone)]
pub struct Confirm<S> {
    inner: S,
    gate: Arc<KeyGate>,
}

impl<S, R> tower::Service<R> for Confirm<S>
where
    S: tower::Service<R> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        // The connector that was polled ready connects, and only after the
        // gate's snapshot is taken (a connector may start in `call`).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let gate = self.gate.clone();
        Box::pin(async move {
            let before = gate.before_connect().await?;
            let conn = inner.call(req).await.map_err(Into::into)?;
            // Dropping `conn` on a refusal closes it unwritten.
            gate.confirm(&before).await?;
            Ok(conn)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::gateway_socket::tests::{spawn_impostor, status_with_pid};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const KEY: &str = "connect-test-key-0123456789";

    fn gate_on(
        port: u16,
    ) -> (
        Arc<KeyGate>,
        tokio::sync::watch::Sender<crate::agent::AgentStatus>,
    ) {
        let status = status_with_pid(Some(std::process::id()));
        let gate = Arc::new(KeyGate::new(Some(port), KEY, status.subscribe()));
        (gate, status)
    }

    type Hook = Arc<dyn Fn() + Send + Sync>;

    /// Runs `hook` just before the connector it wraps connects: the
    /// moment between the gate's check and the connection.
    #[derive(Clone)]
    struct BeforeConnect<S> {
        inner: S,
        hook: Hook,
    }

    impl<S, R> tower::Service<R> for BeforeConnect<S>
    where
        S: tower::Service<R>,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: R) -> S::Future {
            (self.hook)();
            self.inner.call(req)
        }
    }

    /// [`client`] with `hook` run between the gate's check and the
    /// connect (the confirm layer outside it, as in production).
    fn client_with_window(gate: &Arc<KeyGate>, hook: Hook) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            // Only reached without the confirm layer: an impostor that
            // reads the request and never answers.
            .timeout(Duration::from_secs(30))
            .connector_layer(tower::layer::layer_fn(move |inner| BeforeConnect {
                inner,
                hook: hook.clone(),
            }))
            .connector_layer(ConfirmLayer { gate: gate.clone() })
            .build()
            .expect("client")
    }

    /// A request with the key whose port changes hands in the moment
    /// between the gate's check and the connect: this process's verified
    /// listener is closed and `take_port` binds the port anew. Returns
    /// the request's error (it must fail), what `take_port` returned, and
    /// the gate.
    async fn send_across_a_swap<T: Send + 'static>(
        take_port: impl Fn(u16) -> T + Send + Sync + 'static,
    ) -> (reqwest::Error, T, Arc<KeyGate>, u16) {
        // This test process plays the gateway.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let ours = std::sync::Mutex::new(Some(l));
        // A watch keeps its last value for the gate after the sender goes.
        let (gate, _status) = gate_on(port);
        let taken = Arc::new(std::sync::Mutex::new(None));
        let t = taken.clone();
        let http = client_with_window(
            &gate,
            Arc::new(move || {
                if let Some(l) = ours.lock().expect("lock").take() {
                    drop(l);
                    *t.lock().expect("lock") = Some(take_port(port));
                }
            }),
        );
        let bearer = gate.bearer().await.expect("our own listener");
        let err = http
            .post(format!("http://127.0.0.1:{port}/v1/runs"))
            .header(reqwest::header::AUTHORIZATION, bearer)
            .body("the secret plan")
            .send()
            .await
            .expect_err("the connection must be dropped");
        let taken = taken.lock().expect("lock").take().expect("the hook ran");
        (err, taken, gate, port)
    }

    #[tokio::test]
    async fn an_impostor_bound_between_check_and_connect_gets_not_one_byte() {
        // The gateway dies, the agent's shell takes the port.
        let (err, mut impostor, gate, port) = send_across_a_swap(spawn_impostor).await;
        let received = impostor.received();
        // The next check refuses before connecting at all.
        let next = gate.check().await;
        impostor.stop();
        assert_eq!(received, Some(0), "the impostor read bytes");
        assert_eq!(refusal_of(&err), Some(Refusal::Foreign(port)), "{err:?}");
        assert!(err.is_connect());
        assert_eq!(next, Err(Refusal::Foreign(port)));
    }

    #[tokio::test]
    async fn a_listener_replaced_by_the_gateway_itself_is_a_change_to_retry() {
        let (err, l, gate, port) = send_across_a_swap(|port| {
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind")
        })
        .await;
        // Still this process's listener, so the gateway's: not foreign,
        // but not the socket that was verified either.
        assert_eq!(refusal_of(&err), Some(Refusal::Changed(port)), "{err:?}");
        let (mut s, _) = l.accept().expect("the dropped connection");
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut got);
        assert!(got.is_empty(), "sent: {}", String::from_utf8_lossy(&got));
        // The new listener is verified on the next request.
        assert_eq!(gate.check().await, Ok(()));
    }

    #[tokio::test]
    async fn the_verified_listener_gets_the_request_and_the_connection_is_reused() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (gate, _status) = gate_on(port);
        let http = client(&gate, Duration::from_secs(5))
            .build()
            .expect("client");
        // A keep-alive server: one connection, any number of requests.
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            let mut heads = Vec::new();
            while heads.len() < 2 {
                let (mut s, _) = l.accept().await.expect("accept");
                accepted += 1;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while heads.len() < 2 {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        heads.push(String::from_utf8_lossy(&buf[..end]).into_owned());
                        buf.drain(..end + 4);
                        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .expect("answer");
                    }
                }
            }
            (accepted, heads)
        });
        let mut reads = Vec::new();
        for _ in 0..2 {
            let before = gate.listener_reads();
            let bearer = gate.bearer().await.expect("our own listener");
            let resp = http
                .get(format!("http://127.0.0.1:{port}/health"))
                .header(reqwest::header::AUTHORIZATION, bearer)
                .send()
                .await
                .expect("the gateway answers");
            assert_eq!(resp.text().await.expect("body"), "ok");
            reads.push(gate.listener_reads() - before);
        }
        // A new connection: the pre-check and the confirm (the layer takes
        // the pre-check's verification); a kept-alive one: the pre-check.
        assert_eq!(reads, [2, 1], "reads of the listeners per request");
        let (accepted, heads) = server.await.expect("server");
        assert_eq!(accepted, 1, "the second request reused the connection");
        assert!(
            heads
                .iter()
                .all(|h| h.to_ascii_lowercase().contains("authorization: bearer")),
            "{heads:?}"
        );
    }
}
