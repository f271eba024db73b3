//! A TCP relay in front of RabbitMQ whose client-to-broker direction a test
//! can hold: what warren sends (output publishes, acks) waits, what the
//! broker sends (deliveries) still arrives.
//!
//! It only forwards bytes; it knows nothing of AMQP.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

/// A relay listening on a loopback port of its own, in front of `upstream`.
/// It runs on the test's runtime and stops with it.
#[derive(Debug)]
pub struct Relay {
    port: u16,
    hold: watch::Sender<bool>,
}

impl Relay {
    pub async fn start(upstream: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hold, held) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut held = held.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = from_client.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            let _ = held.wait_for(|h| !*h).await;
                            to_server.write_all(&buf[..n]).await?;
                        }
                    };
                    let down = tokio::io::copy(&mut from_server, &mut to_client);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Relay { port, hold }
    }

    /// The AMQP URL of the relay.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The URL of the relay as a Redis server (when it relays one).
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Holds (`true`) or releases (`false`) what clients send.
    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}
