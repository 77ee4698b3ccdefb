//! The commands that reach the play loop (OSC `/orchestra/…`, the page's controls): those that
//! come while one is applied wait here, and each next apply takes them as one [`Batch`] —
//! every set that waits (sets of one param merged to the latest), or one other command alone.
//! A flood of sets then costs one apply per turn, and a performer's command waits for one
//! apply at most, never behind the flood.

use crate::osc::dispatch::Command;
use crate::osc::server::{ControlRequest, Via};
use crate::script::layer::LiveOp;
use std::collections::VecDeque;
use tokio::sync::{mpsc, oneshot};

/// Where one request's answer goes.
pub type Reply = oneshot::Sender<Result<String, String>>;

/// What the next apply carries out.
pub enum Batch {
    /// Live changes laid over the layer together: one structural change, or every set that
    /// waited; each with the requests it answers (a set merged into a later one of the same
    /// param answers with it).
    Changes {
        via: Via,
        changes: Vec<(LiveOp, Vec<Reply>)>,
        /// How many requests it answers in all.
        requests: usize,
    },
    /// `/orchestra/reload` or `/orchestra/reset`.
    Other {
        command: Command,
        via: Via,
        reply: Reply,
    },
}

/// Most requests taken off the channel for one batch: the rest wait for the next.
pub const MAX_BATCH: usize = 4096;

/// A batch begins no sooner than this after the one before: sets that come faster (a flood, a
/// controller sending at its own rate) are merged into at most a hundred applies a second,
/// instead of keeping the controller applying all the time. A lone command is not delayed.
pub const BATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// The commands waiting for their turn.
pub struct Waiting {
    control: mpsc::UnboundedReceiver<ControlRequest>,
    queued: VecDeque<ControlRequest>,
    /// Changes of a batch that did not load together, each tried on its own next.
    alone: VecDeque<(Via, LiveOp, Vec<Reply>)>,
    /// When the last batch was taken.
    last: Option<tokio::time::Instant>,
}

impl Waiting {
    pub fn new(control: mpsc::UnboundedReceiver<ControlRequest>) -> Waiting {
        Waiting {
            control,
            queued: VecDeque::new(),
            alone: VecDeque::new(),
            last: None,
        }
    }

    /// The next batch, once there is a command and [`BATCH_EVERY`] has passed since the last.
    /// Cancel-safe (for a `select!`): what is taken off the channel is kept.
    pub async fn next(&mut self) -> Option<Batch> {
        if let Some((via, op, replies)) = self.alone.pop_front() {
            let requests = replies.len();
            return Some(Batch::Changes {
                via,
                changes: vec![(op, replies)],
                requests,
            });
        }
        if self.queued.is_empty() {
            let first = self.control.recv().await?;
            self.queued.push_back(first);
        }
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + BATCH_EVERY).await;
        }
        self.last = Some(tokio::time::Instant::now());
        while self.queued.len() < MAX_BATCH {
            match self.control.try_recv() {
                Ok(request) => self.queued.push_back(request),
                Err(_) => break,
            }
        }
        Some(self.take_batch())
    }

    /// The changes of a batch that did not load together go again, each on its own, first.
    pub fn try_alone(&mut self, via: Via, changes: Vec<(LiveOp, Vec<Reply>)>) {
        for (op, replies) in changes.into_iter().rev() {
            self.alone.push_front((via, op, replies));
        }
    }

    fn take_batch(&mut self) -> Batch {
        let first = self.queued.pop_front().expect("a command waits");
        let via = first.via;
        let op = match first.command {
            Command::Change(op) => op,
            command => {
                return Batch::Other {
                    command,
                    via,
                    reply: first.reply,
                }
            }
        };
        let mut changes = vec![(op, vec![first.reply])];
        let mut requests = 1;
        // Sets join the batch up to the first other command, which keeps its place; any
        // other change goes alone.
        while is_set(&changes[0].0) {
            let Some(request) = self.queued.pop_front() else {
                break;
            };
            let op = match request.command {
                Command::Change(op) if is_set(&op) => op,
                command => {
                    self.queued
                        .push_front(ControlRequest { command, ..request });
                    break;
                }
            };
            requests += 1;
            match changes
                .iter()
                .position(|(earlier, _)| same_param(earlier, &op))
            {
                // Only the last value matters; the earlier one's senders hear its outcome.
                Some(at) => {
                    let (_, mut replies) = changes.remove(at);
                    replies.push(request.reply);
                    changes.push((op, replies));
                }
                None => changes.push((op, vec![request.reply])),
            }
        }
        Batch::Changes {
            via,
            changes,
            requests,
        }
    }
}

fn is_set(op: &LiveOp) -> bool {
    matches!(op, LiveOp::Set { .. })
}

fn same_param(a: &LiveOp, b: &LiveOp) -> bool {
    matches!((a, b), (
        LiveOp::Set { block: x, param: p, .. },
        LiveOp::Set { block: y, param: q, .. },
    ) if x == y && p == q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(block: &str, param: &str, value: f64) -> LiveOp {
        LiveOp::Set {
            block: block.into(),
            param: param.into(),
            value: value.into(),
        }
    }

    fn send(
        tx: &mpsc::UnboundedSender<ControlRequest>,
        command: Command,
    ) -> oneshot::Receiver<Result<String, String>> {
        let (reply, answer) = oneshot::channel();
        tx.send(ControlRequest {
            command,
            via: Via::Osc,
            reply,
        })
        .unwrap();
        answer
    }

    fn ops(batch: &Batch) -> Vec<LiveOp> {
        match batch {
            Batch::Changes { changes, .. } => changes.iter().map(|(op, _)| op.clone()).collect(),
            Batch::Other { .. } => Vec::new(),
        }
    }

    #[tokio::test]
    async fn waiting_sets_go_together_merged_per_param_and_other_commands_keep_their_turn() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut waiting = Waiting::new(rx);
        let mut answers = Vec::new();
        for i in 0..1000 {
            answers.push(send(&tx, Command::Change(set("tone", "freq", i as f64))));
            answers.push(send(&tx, Command::Change(set("filt", "cutoff", i as f64))));
        }
        answers.push(send(&tx, Command::Reload));
        answers.push(send(&tx, Command::Change(set("tone", "amp", 0.5))));
        let Some(first @ Batch::Changes { requests, .. }) = waiting.next().await else {
            panic!("the sets first")
        };
        assert_eq!(requests, 2000);
        assert_eq!(
            ops(&first),
            vec![set("tone", "freq", 999.0), set("filt", "cutoff", 999.0)]
        );
        // Every request is answered by the set that merged it.
        let Batch::Changes { changes, .. } = first else {
            unreachable!()
        };
        for (op, replies) in changes {
            for reply in replies {
                reply.send(Ok(op.to_string())).unwrap();
            }
        }
        assert_eq!(
            answers[0].try_recv().unwrap(),
            Ok("set tone.freq = 999.0".to_string())
        );
        assert!(matches!(
            waiting.next().await,
            Some(Batch::Other {
                command: Command::Reload,
                ..
            })
        ));
        assert_eq!(
            ops(&waiting.next().await.unwrap()),
            vec![set("tone", "amp", 0.5)]
        );
    }

    #[tokio::test]
    async fn a_structural_change_goes_alone_and_a_batch_that_failed_is_tried_change_by_change() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut waiting = Waiting::new(rx);
        let connect = LiveOp::Remove { name: "pad".into() };
        let _a = send(&tx, Command::Change(connect.clone()));
        let _b = send(&tx, Command::Change(set("tone", "freq", 1.0)));
        let _c = send(&tx, Command::Change(set("tone", "amp", 1.0)));
        assert_eq!(ops(&waiting.next().await.unwrap()), vec![connect]);
        let Some(Batch::Changes { via, changes, .. }) = waiting.next().await else {
            panic!("the sets")
        };
        assert_eq!(changes.len(), 2);
        waiting.try_alone(via, changes);
        assert_eq!(
            ops(&waiting.next().await.unwrap()),
            vec![set("tone", "freq", 1.0)]
        );
        assert_eq!(
            ops(&waiting.next().await.unwrap()),
            vec![set("tone", "amp", 1.0)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_begins_no_sooner_than_batch_every_after_the_last() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut waiting = Waiting::new(rx);
        let _a = send(&tx, Command::Change(set("tone", "freq", 1.0)));
        let first = tokio::time::Instant::now();
        waiting.next().await.unwrap();
        assert_eq!(
            tokio::time::Instant::now(),
            first,
            "a lone command waits for nothing"
        );
        let _b = send(&tx, Command::Change(set("tone", "freq", 2.0)));
        waiting.next().await.unwrap();
        assert_eq!(tokio::time::Instant::now(), first + BATCH_EVERY);
    }
}
