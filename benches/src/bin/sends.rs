//! The io_uring lever, measured in isolation: what the server's send side costs with one
//! `send` system call per socket (what the tick does today) versus one io_uring submission for
//! a whole batch of sockets (a lobby's members, or more).
//!
//! A sender thread pinned to one core writes `--size`-byte messages to `--sockets` loopback
//! TCP connections at `--rate` messages per second in batches of `--batch`; a receiver on the
//! other core reads them all as the load generator does (one tokio task per socket, woken by
//! epoll), so the sender pays the same loopback receive path and wake-ups as the real server.
//! The figure is the sender thread's CPU time per message (`CLOCK_THREAD_CPUTIME_ID`); modes
//! alternate, `--repeats` times each, and the medians and their ratio are printed.
//!
//! `cargo run --release -p tickrelay-benches --bin sends -- --batch 8`

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use io_uring::{IoUring, opcode, types};
use tickrelay_benches::summary::Spread;
use tokio::io::AsyncReadExt;

#[derive(Parser)]
#[command(about = "Send-side CPU per message: one send(2) per socket vs io_uring batches")]
struct Args {
    /// Loopback connections, each receiving one message per round.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Message size in bytes (a `standard` snapshot with its frame header is ~350).
    #[arg(long, default_value_t = 350)]
    size: usize,
    /// Messages per second, all sockets together (`standard`: 1,000 clients x 30 Hz).
    #[arg(long, default_value_t = 30_000)]
    rate: u32,
    /// Sockets written per batch: one io_uring submission, or that many send(2) calls.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Measurements per mode (alternating).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Cores for the sender and the receiver.
    #[arg(long, default_value_t = 0)]
    sender_core: usize,
    #[arg(long, default_value_t = 1)]
    receiver_core: usize,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Syscalls,
    IoUring,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.batch > 0 && args.sockets >= args.batch,
        "need 0 < --batch <= --sockets"
    );
    let (senders, receivers) = connect_pairs(args.sockets)?;
    let receiver_core = args.receiver_core;
    std::thread::spawn(move || receive_all(receivers, receiver_core));
    pin_to(args.sender_core)?;
    let mut ring = IoUring::new(args.batch.next_power_of_two().try_into()?)?;
    let message = vec![0x5a; args.size];
    let mut results: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for repeat in 0..args.repeats {
        for (i, mode) in [Mode::Syscalls, Mode::IoUring].into_iter().enumerate() {
            let micros = run(&args, mode, &senders, &mut ring, &message)?;
            eprintln!(
                "sends: repeat {}/{} {mode:?}: {micros:.2} µs per message",
                repeat + 1,
                args.repeats
            );
            results[i].push(micros);
        }
    }
    let [syscalls, uring] = results.map(|r| Spread::of(&r).context("no measurements"));
    let (syscalls, uring) = (syscalls?, uring?);
    println!(
        "{} sockets, {}-byte messages, {} msg/s, batches of {}, {} x {} s per mode",
        args.sockets, args.size, args.rate, args.batch, args.repeats, args.seconds
    );
    println!(
        "send(2) per socket:     {} µs per message",
        syscalls.show(2)
    );
    println!("io_uring per batch:     {} µs per message", uring.show(2));
    println!(
        "io_uring / send(2):     {:.2}",
        uring.median / syscalls.median
    );
    Ok(())
}

/// Sends paced batches for `--seconds` and returns the sender thread's CPU µs per message.
fn run(
    args: &Args,
    mode: Mode,
    senders: &[TcpStream],
    ring: &mut IoUring,
    message: &[u8],
) -> anyhow::Result<f64> {
    let batch_interval = Duration::from_secs_f64(args.batch as f64 / f64::from(args.rate));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let cpu_start = thread_cpu()?;
    let mut next = Instant::now();
    let mut sent = 0u64;
    let mut offset = 0;
    while Instant::now() < deadline {
        let batch = &senders[offset..offset + args.batch];
        offset = (offset + args.batch) % (senders.len() - senders.len() % args.batch);
        match mode {
            Mode::Syscalls => {
                for mut socket in batch {
                    ensure!(socket.write(message)? == message.len(), "short send");
                }
            }
            Mode::IoUring => send_batch(ring, batch, message)?,
        }
        sent += batch.len() as u64;
        next += batch_interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok((thread_cpu()? - cpu_start).as_secs_f64() * 1e6 / sent as f64)
}

/// One submission for the whole batch, then its completions.
fn send_batch(ring: &mut IoUring, batch: &[TcpStream], message: &[u8]) -> anyhow::Result<()> {
    for (i, socket) in batch.iter().enumerate() {
        let send = opcode::Send::new(
            types::Fd(socket.as_raw_fd()),
            message.as_ptr(),
            message.len().try_into()?,
        )
        .build()
        .user_data(i as u64);
        // SAFETY: `message` outlives the submission (we wait for every completion below) and
        // the queue was sized for a whole batch.
        unsafe { ring.submission().push(&send) }.context("submission queue full")?;
    }
    ring.submit_and_wait(batch.len())?;
    for completion in ring.completion() {
        if usize::try_from(completion.result()).ok() != Some(message.len()) {
            bail!("send completed with {}", completion.result());
        }
    }
    Ok(())
}

/// `n` loopback TCP connections with Nagle off: the sending ends, and the receiving ends.
fn connect_pairs(n: usize) -> anyhow::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let sender = TcpStream::connect(addr)?;
        sender.set_nodelay(true)?;
        senders.push(sender);
        receivers.push(listener.accept()?.0);
    }
    Ok((senders, receivers))
}

/// Reads everything, one task per socket on a single-threaded runtime (as the load
/// generator's worker does), until the process exits.
fn receive_all(receivers: Vec<TcpStream>, core: usize) -> anyhow::Result<()> {
    pin_to(core)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let local = tokio::task::LocalSet::new();
        for socket in receivers {
            socket.set_nonblocking(true)?;
            let mut socket = tokio::net::TcpStream::from_std(socket)?;
            local.spawn_local(async move {
                let mut buffer = vec![0u8; 4096];
                while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
            });
        }
        local.await;
        Ok(())
    })
}

fn pin_to(core: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        result == 0,
        "cannot pin to core {core}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn thread_cpu() -> anyhow::Result<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    ensure!(
        result == 0,
        "clock_gettime: {}",
        std::io::Error::last_os_error()
    );
    Ok(Duration::new(
        now.tv_sec.try_into()?,
        now.tv_nsec.try_into()?,
    ))
}
