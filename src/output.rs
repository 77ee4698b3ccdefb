//! The controller's terminal output: stdout and stderr go through pipes of our own, relayed
//! to the real ones by a thread, so a reader that goes away (`orchestra run … 2>&1 | head -1`,
//! a closed terminal) costs the rest of the output, never a panic that leaves synths playing
//! with nobody to stop them. (`eprintln!` panics when its write fails.)

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One relayed descriptor: where it really went, and the thread that carries it there.
struct Relayed {
    fd: RawFd,
    original: RawFd,
    thread: JoinHandle<()>,
}

/// The relays of stdout and stderr; [`Relay::finish`] flushes them before the process exits.
pub struct Relay {
    relayed: Vec<Relayed>,
    finishing: Arc<AtomicBool>,
}

/// Relay stdout and stderr. Not for the agent, whose stdout is its protocol channel.
pub fn install() -> Relay {
    let finishing = Arc::new(AtomicBool::new(false));
    let relayed = [libc::STDOUT_FILENO, libc::STDERR_FILENO]
        .into_iter()
        .filter_map(|fd| relay(fd, finishing.clone()))
        .collect();
    Relay { relayed, finishing }
}

fn relay(fd: RawFd, finishing: Arc<AtomicBool>) -> Option<Relayed> {
    // SAFETY: plain descriptor calls on descriptors this process owns; each result is checked.
    unsafe {
        let original = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
        if original < 0 {
            return None;
        }
        let mut ends = [0; 2];
        if libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            libc::close(original);
            return None;
        }
        let (read_end, write_end) = (ends[0], ends[1]);
        if libc::dup2(write_end, fd) < 0 {
            libc::close(read_end);
            libc::close(write_end);
            libc::close(original);
            return None;
        }
        libc::close(write_end);
        let mut source = File::from_raw_fd(read_end);
        let mut sink = File::from_raw_fd(libc::dup(original));
        let thread = std::thread::Builder::new()
            .name(format!("relay-{fd}"))
            .spawn(move || {
                let mut broken = false;
                let mut buf = [0u8; 8192];
                // Once finishing, a child that inherited the pipe and keeps writing must not
                // hold the exit: pass on at most this many more reads.
                let mut reads_left_after_finish = 64;
                loop {
                    if finishing.load(Ordering::Acquire) {
                        if reads_left_after_finish == 0 {
                            break;
                        }
                        reads_left_after_finish -= 1;
                    }
                    // Wait for data, looking up every 20 ms to see whether we are finishing.
                    let mut poll = libc::pollfd {
                        fd: read_end,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ready = libc::poll(&mut poll, 1, 20);
                    if ready == 0 {
                        if finishing.load(Ordering::Acquire) {
                            break;
                        }
                        continue;
                    }
                    if ready < 0 {
                        continue;
                    }
                    match source.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if !broken && sink.write_all(&buf[..n]).is_err() {
                                // The reader is gone: keep draining so writers never block.
                                broken = true;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })
            .ok()?;
        Some(Relayed {
            fd,
            original,
            thread,
        })
    }
}

impl Relay {
    /// Put the real descriptors back and wait until everything written so far is passed on.
    pub fn finish(self) {
        let _ = std::io::stdout().flush();
        for relayed in &self.relayed {
            // SAFETY: `original` is our duplicate of the real descriptor.
            unsafe { libc::dup2(relayed.original, relayed.fd) };
        }
        self.finishing.store(true, Ordering::Release);
        for relayed in self.relayed {
            let _ = relayed.thread.join();
        }
    }
}
