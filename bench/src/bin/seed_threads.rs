//! `polylogue-seed-threads`: fills a running cluster with threads through the thread service's own
//! NATS API (`thread.create`: validation, store, domain event, search indexing — the same path the
//! edge uses), then waits until the search indexer has caught up, so a benchmark that follows
//! measures a settled system.
//!
//! Titles are `"<topic> notes <i>"` with 50 topics in turn (each topic matches 2% of a user's
//! threads) and the rare word `zeppelin` in every 1,000th title (0.1%).

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use polylogue_bus::{Bus, RequestContext};
use polylogue_contracts::threads::{CreateThreadRequest, ThreadView};
use std::time::{Duration, Instant};

pub const TOPICS: [&str; 50] = [
    "kubernetes",
    "pasta",
    "microservices",
    "gardening",
    "quantum",
    "jazz",
    "marathon",
    "sourdough",
    "astronomy",
    "chess",
    "photography",
    "espresso",
    "volcano",
    "origami",
    "surfing",
    "database",
    "compiler",
    "watercolor",
    "beekeeping",
    "robotics",
    "violin",
    "archery",
    "mushroom",
    "glacier",
    "typography",
    "cycling",
    "pottery",
    "telescope",
    "knitting",
    "saxophone",
    "climbing",
    "fermentation",
    "lighthouse",
    "calligraphy",
    "meteorite",
    "kayaking",
    "embroidery",
    "harmonica",
    "tornado",
    "bonsai",
    "cartography",
    "falconry",
    "mosaic",
    "hydroponics",
    "puppetry",
    "sailing",
    "taxidermy",
    "ukulele",
    "woodworking",
    "yodeling",
];

#[derive(Parser)]
#[command(name = "polylogue-seed-threads")]
struct Args {
    #[arg(long)]
    nats_url: String,
    /// The user who gets `--main` threads (a real user id, so the edge can be asked for them).
    #[arg(long)]
    owner: String,
    #[arg(long, default_value_t = 100_000)]
    main: u32,
    /// Other users, each with `--per-other` threads.
    #[arg(long, default_value_t = 900)]
    others: u32,
    #[arg(long, default_value_t = 1_000)]
    per_other: u32,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value = "polylogue")]
    prefix: String,
}

fn title(i: u32) -> String {
    let topic = TOPICS[(i as usize) % TOPICS.len()];
    if i % 1000 == 7 {
        format!("{topic} notes {i} zeppelin")
    } else {
        format!("{topic} notes {i}")
    }
}

#[tokio::main]
#[expect(
    clippy::print_stdout,
    reason = "a benchmark tool reports progress on stdout"
)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = async_nats::connect(&args.nats_url)
        .await
        .context("connecting to NATS")?;
    let bus = Bus::from_client(client.clone(), &args.prefix, Duration::from_secs(30));
    let mut jobs: Vec<(String, u32)> = (0..args.main).map(|i| (args.owner.clone(), i)).collect();
    for _ in 0..args.others {
        let user = uuid::Uuid::now_v7().to_string();
        jobs.extend((0..args.per_other).map(|i| (user.clone(), i)));
    }
    // Interleave users the way real traffic would: a deterministic shuffle (xorshift Fisher-Yates).
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for k in (1..jobs.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = usize::try_from(state % (k as u64 + 1)).unwrap_or(0);
        jobs.swap(k, j);
    }
    let total = jobs.len();
    println!(
        "seeding {total} threads ({} for {}) with {} in flight",
        args.main, args.owner, args.concurrency
    );
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut next = 0usize;
    let mut done = 0usize;
    let mut failed = 0usize;
    let ctx = RequestContext::internal();
    loop {
        while inflight.len() < args.concurrency && next < total {
            let (user, i) = jobs[next].clone();
            next += 1;
            let bus = bus.clone();
            let ctx = ctx.clone();
            inflight.push(async move {
                bus.request::<_, ThreadView>(
                    "thread",
                    "create",
                    &ctx,
                    &CreateThreadRequest {
                        user_id: user,
                        title: title(i),
                    },
                )
                .await
            });
        }
        match inflight.next().await {
            Some(Ok(_)) => done += 1,
            Some(Err(e)) => {
                failed += 1;
                if failed <= 5 {
                    println!("create failed: {e}");
                }
            }
            None => break,
        }
        if (done + failed).is_multiple_of(50_000) {
            let rate = (done + failed) as f64 / started.elapsed().as_secs_f64();
            println!("  {} / {total} ({rate:.0}/s)", done + failed);
        }
    }
    let seeded = started.elapsed();
    println!(
        "seeded {done} threads ({failed} failed) in {:.1} s: {:.0} creates/s",
        seeded.as_secs_f64(),
        done as f64 / seeded.as_secs_f64()
    );

    // Wait for the search indexer to drain its backlog.
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(format!("{}-events", args.prefix))
        .await
        .context("events stream")?;
    let wait_started = Instant::now();
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer("thread-search-indexer")
            .await
            .map_err(|e| anyhow::anyhow!("indexer consumer: {e}"))?;
        let info = consumer.info().await.context("consumer info")?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        if wait_started.elapsed().as_secs().is_multiple_of(10) {
            println!(
                "  indexer backlog: {} pending, {} unacked",
                info.num_pending, info.num_ack_pending
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "search index caught up {:.1} s after the last create ({:.1} s in all)",
        wait_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
