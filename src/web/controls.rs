//! The page's changes to the orchestra: a `{"set": {"block", "param", "value"}}` message on its
//! websocket becomes the same [`ControlRequest`] an OSC `/orchestra/set` does (so the live loop
//! checks, applies, logs and keeps it in the live layer the same way), at most one at a time
//! per page, and its answer goes back to that page only as `{"answer": {…}}`.

use crate::osc::dispatch::Command;
use crate::osc::server::ControlRequest;
use crate::script::layer::LiveOp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use tokio::sync::{mpsc, oneshot};

/// The longest message a page may send: a set holding the longest text a param may hold.
pub const MAX_MESSAGE: usize = crate::modules::params::MAX_TEXT + 1024;

/// Changes of different params that may wait behind the one in flight, per page. A page
/// changes one control at a time; more is a page gone wrong, refused rather than queued.
pub const MAX_WAITING: usize = 8;

/// Answers not yet sent that a page may pile up (refusals come at once, sends can lag).
const MAX_READY: usize = 16;

/// `{"set": {"block": "tone", "param": "freq", "value": 660}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    pub block: String,
    pub param: String,
    pub value: Value,
}

/// Everything a page may ask (only sets, today).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum PageRequest {
    Set(SetRequest),
}

impl SetRequest {
    fn op(&self) -> LiveOp {
        LiveOp::Set {
            block: self.block.clone(),
            param: self.param.clone(),
            value: self.value.clone(),
        }
    }

    fn same_param(&self, other: &SetRequest) -> bool {
        self.block == other.block && self.param == other.param
    }
}

/// What the page hears back about one set.
#[derive(Debug, Serialize)]
struct Answer<'a> {
    block: &'a str,
    param: &'a str,
    ok: bool,
    /// The live loop's answer: what was applied, or why nothing was.
    text: &'a str,
}

fn answer(set: &SetRequest, result: &Result<String, String>) -> String {
    let (ok, text) = match result {
        Ok(text) => (true, text),
        Err(text) => (false, text),
    };
    let answer = Answer {
        block: &set.block,
        param: &set.param,
        ok,
        text,
    };
    serde_json::json!({ "answer": answer }).to_string()
}

/// A page's message as a set, or why it is not one. Values are what `/orchestra/set` takes: a
/// number, a string, or (from the page's checkboxes) a boolean.
pub fn parse(text: &str) -> Result<SetRequest, String> {
    if text.len() > MAX_MESSAGE {
        return Err(format!("longer than {MAX_MESSAGE} bytes"));
    }
    let PageRequest::Set(set) = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match set.value {
        Value::Number(_) | Value::String(_) | Value::Bool(_) => Ok(set),
        other => Err(format!(
            "a value must be a number, string or boolean, not {other}"
        )),
    }
}

/// One page's changes: the one the live loop is carrying out, those waiting behind it (the
/// latest value of each param), and answers ready to send.
pub struct PageControls {
    control: Option<mpsc::UnboundedSender<ControlRequest>>,
    in_flight: Option<(SetRequest, oneshot::Receiver<Result<String, String>>)>,
    waiting: Vec<SetRequest>,
    ready: VecDeque<String>,
}

impl PageControls {
    /// Changes go to `control`, the live loop's (none: every change is refused).
    pub fn new(control: Option<mpsc::UnboundedSender<ControlRequest>>) -> PageControls {
        PageControls {
            control,
            in_flight: None,
            waiting: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    /// Take one text message from the page. Anything but a set is ignored: only a page gone
    /// wrong sends it, and it has nobody to tell.
    pub fn receive(&mut self, text: &str) {
        let set = match parse(text) {
            Ok(set) => set,
            Err(why) => {
                tracing::debug!("web: ignored a message from a page ({why})");
                return;
            }
        };
        if self.in_flight.is_none() {
            self.send(set);
        } else if let Some(older) = self.waiting.iter_mut().find(|w| w.same_param(&set)) {
            // A slider moved again before its turn: only its last value matters, and that
            // one's answer is the control's.
            *older = set;
        } else if self.waiting.len() < MAX_WAITING {
            self.waiting.push(set);
        } else {
            let why = format!(
                "not applied: {MAX_WAITING} changes from this page wait already; try again once they are answered"
            );
            self.tell(answer(&set, &Err(why)));
        }
    }

    fn send(&mut self, set: SetRequest) {
        let Some(control) = &self.control else {
            let why = "changes from the page are off".to_string();
            return self.tell(answer(&set, &Err(why)));
        };
        let (reply, answered) = oneshot::channel();
        let request = ControlRequest {
            command: Command::Change(set.op()),
            via: crate::osc::server::Via::Page,
            reply,
        };
        if control.send(request).is_err() {
            return self.tell(answer(&set, &Err(stopping())));
        }
        self.in_flight = Some((set, answered));
    }

    fn tell(&mut self, answer: String) {
        if self.ready.len() < MAX_READY {
            self.ready.push_back(answer);
        }
    }

    /// The next answer for the page, as JSON: one ready, or the change in flight's once the
    /// live loop gives it (which sends the next waiting one); never, while there is none.
    /// Cancel-safe, for a `select!` beside the page's other traffic.
    pub async fn answer(&mut self) -> String {
        if let Some(ready) = self.ready.pop_front() {
            return ready;
        }
        let Some((_, answered)) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let result = answered.await.unwrap_or_else(|_| Err(stopping()));
        let (set, _) = self.in_flight.take().expect("in flight until answered");
        if !self.waiting.is_empty() {
            let next = self.waiting.remove(0);
            self.send(next);
        }
        answer(&set, &result)
    }
}

/// The answer when the live loop is gone, as the OSC server gives it.
fn stopping() -> String {
    "the runtime is stopping".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::osc::dispatch::{dispatch, Dispatch};
    use rosc::{OscMessage, OscPacket, OscType};
    use std::time::Duration;

    fn set(block: &str, param: &str, value: Value) -> String {
        serde_json::json!({"set": {"block": block, "param": param, "value": value}}).to_string()
    }

    #[test]
    fn a_set_is_the_change_osc_orchestra_set_makes() {
        let from_page = parse(&set("tone", "freq", 660.into())).unwrap();
        let osc = OscPacket::Message(OscMessage {
            addr: "/orchestra/set".into(),
            args: vec![
                OscType::String("tone".into()),
                OscType::String("freq".into()),
                OscType::Int(660),
            ],
        });
        let blocks = std::collections::BTreeMap::<String, ()>::new();
        assert_eq!(
            dispatch(&rosc::encoder::encode(&osc).unwrap(), &blocks),
            Dispatch::Control(Command::Change(from_page.op()))
        );
        assert_eq!(
            parse(&set("tone", "on", true.into())).unwrap().value,
            Value::Bool(true)
        );
    }

    #[test]
    fn malformed_messages_and_wrong_types_are_not_sets() {
        for text in [
            "",
            "hello",
            "[1, 2]",
            r#"{"set": {"block": "tone", "param": "freq"}}"#,
            r#"{"set": {"block": 5, "param": "freq", "value": 660}}"#,
            r#"{"set": {"block": "tone", "param": "freq", "value": 660, "more": 1}}"#,
            r#"{"get": {"block": "tone"}}"#,
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
        assert_eq!(
            parse(&set("tone", "freq", serde_json::json!([660]))),
            Err("a value must be a number, string or boolean, not [660]".into())
        );
        assert_eq!(
            parse(&set("tone", "name", "x".repeat(MAX_MESSAGE).into())),
            Err(format!("longer than {MAX_MESSAGE} bytes"))
        );
    }

    /// The change a page's set makes, laid over `sine → dac` as the live loop does: the same
    /// checks `/orchestra/set` meets (the block exists, then the value fits the param).
    fn checked(text: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("song.lua");
        std::fs::write(
            &script,
            "local tone = block \"tone\" { module = \"sine\" }\ntone >> block \"out\" { module = \"dac\" }\n",
        )
        .unwrap();
        let mut orchestra = crate::script::eval_script(&script).unwrap();
        let op = parse(text)?.op();
        crate::script::layer::apply_op(&op, &mut orchestra, dir.path())
            .map_err(|e| e.to_string())?;
        crate::resolve::resolve(&orchestra, &crate::modules::ModuleLibrary::builtin())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_unknown_block_or_a_value_of_the_wrong_kind_is_refused_as_osc_would() {
        assert_eq!(checked(&set("tone", "freq", 660.into())), Ok(()));
        assert_eq!(
            checked(&set("tnoe", "freq", 660.into())),
            Err("no block `tnoe` (did you mean `tone`?)".into())
        );
        let wrong = checked(&set("tone", "freq", "loud".into())).unwrap_err();
        assert!(
            wrong.ends_with("param `freq` must be a number (like its default 440), not \"loud\""),
            "{wrong}"
        );
    }

    /// The live loop's side of the channel: the sets it was handed, not answered yet.
    fn handed(rx: &mut mpsc::UnboundedReceiver<ControlRequest>) -> Vec<ControlRequest> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn value_of(request: &ControlRequest) -> Value {
        match &request.command {
            Command::Change(LiveOp::Set { value, .. }) => value.clone(),
            other => panic!("{other:?}"),
        }
    }

    async fn next_answer(controls: &mut PageControls) -> Value {
        let text = tokio::time::timeout(Duration::from_secs(5), controls.answer())
            .await
            .expect("an answer");
        serde_json::from_str(&text).unwrap()
    }

    #[tokio::test]
    async fn one_set_at_a_time_reaches_the_live_loop_and_a_slider_s_last_value_wins() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut controls = PageControls::new(Some(tx));
        controls.receive(&set("tone", "freq", 500.into()));
        controls.receive(&set("tone", "freq", 600.into()));
        controls.receive(&set("tone", "amp", 0.2.into()));
        controls.receive(&set("tone", "freq", 700.into()));
        controls.receive("not a set");
        let first = handed(&mut rx);
        assert_eq!(first.len(), 1, "one in flight");
        assert_eq!(value_of(&first[0]), 500);
        for request in first {
            let _ = request.reply.send(Ok("set tone.freq = 500".into()));
        }
        assert_eq!(
            next_answer(&mut controls).await,
            serde_json::json!({"answer": {"block": "tone", "param": "freq", "ok": true, "text": "set tone.freq = 500"}})
        );
        // 600 was replaced by 700 before its turn, where 600 waited: before the amp.
        let second = handed(&mut rx);
        assert_eq!(second.iter().map(value_of).collect::<Vec<_>>(), [700]);
        for request in second {
            let _ = request.reply.send(Err("refused".into()));
        }
        assert_eq!(
            next_answer(&mut controls).await,
            serde_json::json!({"answer": {"block": "tone", "param": "freq", "ok": false, "text": "refused"}})
        );
        let third = handed(&mut rx);
        assert_eq!(third.iter().map(value_of).collect::<Vec<_>>(), [0.2]);
        drop(third);
        assert_eq!(
            next_answer(&mut controls).await["answer"]["text"],
            "the runtime is stopping"
        );
        assert!(handed(&mut rx).is_empty(), "nothing more");
    }

    #[tokio::test]
    async fn a_page_that_floods_gets_refusals_not_a_queue() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut controls = PageControls::new(Some(tx));
        for i in 0..=MAX_WAITING + 1 {
            controls.receive(&set("tone", &format!("p{i}"), 1.into()));
        }
        assert_eq!(handed(&mut rx).len(), 1);
        assert_eq!(
            next_answer(&mut controls).await,
            serde_json::json!({"answer": {"block": "tone", "param": "p9", "ok": false,
                "text": "not applied: 8 changes from this page wait already; try again once they are answered"}})
        );
        let mut off = PageControls::new(None);
        off.receive(&set("tone", "freq", 1.into()));
        assert_eq!(
            next_answer(&mut off).await["answer"]["text"],
            "changes from the page are off"
        );
    }
}
