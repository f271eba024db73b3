//! The bare lapin echo of line 2e, run as a child process of the bench
//! (`bench bare-echo`): the broker's limit for a consumer that does what
//! line 5 asks of the broker, with nothing of warren's.
//!
//! Per message, as warren's echo pipeline: publish the body to the output
//! queue, persistent and mandatory, on a confirm-mode channel of its own,
//! with the properties warren gives an output (its deterministic message id
//! and an `x-warren-module` header naming a module digest: the broker's
//! cost per message grows with the bytes it keeps per queued message);
//! once the broker confirms it, ack the input. It does that as cheaply as
//! lapin allows: publishes are kept in flight (up to the prefetch) rather
//! than awaited one by one, confirms are taken in order, and each run of
//! confirmed inputs is acked with one `multiple` ack (every 64, or 5 ms
//! after the first). No dedup, no sandbox. It speaks the protocol of
//! `child.rs` up to `drained`; its latency is taken by the bench, as
//! warren's is, when an output arrives in the output queue.
//!
//! With `--http URL` (line 2eh) each message first GETs `URL` with hyper,
//! over a connection of its own (as warren sends a handler's request),
//! reads the whole response, and publishes only then: the bare-client
//! cost of one loopback HTTP request per message.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use warren::amqp::H_MODULE;
use warren::pipeline::output_message_id;

/// Confirmed inputs acked at once.
const ACK_BATCH: u64 = 64;
/// The longest a confirmed input waits for its ack.
const ACK_DELAY: Duration = Duration::from_millis(5);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub queue: String,
    /// Where each message is published (the default exchange, by queue name).
    #[arg(long)]
    pub out: String,
    /// Say `drained` after this many messages.
    #[arg(long)]
    pub drain: u64,
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    /// GET this URL (`http://HOST:PORT/PATH`) before publishing each message.
    #[arg(long)]
    pub http: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let props = ConnectionProperties::default().with_connection_name("warren-bench-echo".into());
    let conn = Connection::connect(&args.url, props)
        .await
        .context("cannot connect")?;
    let input = conn.create_channel().await?;
    input
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let output = conn.create_channel().await?;
    output
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    // The bench stops it with a signal; nothing more comes after `go`.
    println!("ready");
    while stdin.next_line().await?.context("stdin closed")? != "go" {}
    let mut consumer = input
        .basic_consume(
            args.queue.as_str().into(),
            "bare-echo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // What warren writes: `sha256:` and 64 hex digits.
    let mut headers = FieldTable::default();
    headers.insert(
        H_MODULE.into(),
        AMQPValue::LongString(format!("sha256:{}", "0".repeat(64)).into()),
    );
    let mut in_flight = FuturesOrdered::new();
    let mut to_ack: Option<Acker> = None;
    let mut unacked = 0u64;
    let mut handled = 0u64;
    let mut flush = tokio::time::interval(ACK_DELAY);
    loop {
        tokio::select! {
            d = consumer.next() => {
                let d = d.context("consumer ended")??;
                let out = output.clone();
                let queue = args.out.clone();
                let id = d.properties.message_id().as_ref().map_or("-", |s| s.as_str());
                let id = output_message_id("echo", id, 0);
                let headers = headers.clone();
                let http = args.http.clone();
                in_flight.push_back(async move {
                    if let Some(url) = &http {
                        get(url).await?;
                    }
                    let props = BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(id.into())
                        .with_headers(headers);
                    let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
                    let confirm = out
                        .basic_publish("".into(), queue.as_str().into(), opts, &d.data, props)
                        .await?
                        .await?;
                    Ok::<_, anyhow::Error>((d.acker, confirm))
                });
            }
            Some(done) = in_flight.next() => {
                let (acker, confirm) = done?;
                if !matches!(confirm, Confirmation::Ack(None)) {
                    bail!("the broker did not take an output: {confirm:?}");
                }
                to_ack = Some(acker);
                unacked += 1;
                if unacked >= ACK_BATCH {
                    ack(&mut to_ack, &mut unacked).await?;
                }
                handled += 1;
                if handled == args.drain {
                    println!("drained");
                }
            }
            _ = flush.tick() => ack(&mut to_ack, &mut unacked).await?,
        }
    }
}

/// Acks every confirmed input so far with one `multiple` ack.
async fn ack(to_ack: &mut Option<Acker>, unacked: &mut u64) -> anyhow::Result<()> {
    if let Some(acker) = to_ack.take() {
        acker.ack(BasicAckOptions { multiple: true }).await?;
        *unacked = 0;
    }
    Ok(())
}

/// One GET over a new connection, the body read to the end; an error
/// unless the answer is 200.
async fn get(url: &str) -> anyhow::Result<()> {
    use http_body_util::{BodyExt as _, Empty};
    let uri: hyper::Uri = url.parse().context("not a URL")?;
    let host = uri.host().context("no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    drop(sender);
    conn.await??;
    if status != hyper::StatusCode::OK {
        bail!("{url}: status {status}");
    }
    Ok(())
}
