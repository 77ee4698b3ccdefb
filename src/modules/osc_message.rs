//! The OSC messages an engine asks for (`start_messages`, `live_message`): a Lua list
//! `{address, arg, …}` encoded into the packet the agent sends its instance.

use rosc::{OscMessage, OscPacket, OscType};
use serde_json::Value;

/// `{"/s_new", "sine", 1000, 0, 0, "freq", 440.0}`: a Lua integer becomes an OSC int32, a
/// float a float32, a string a string, a boolean a boolean.
pub fn encode(message: &mlua::Table) -> Result<Vec<u8>, String> {
    let mut values = message.sequence_values::<mlua::Value>();
    let addr = match values.next() {
        Some(Ok(mlua::Value::String(s))) => s.to_string_lossy(),
        _ => return Err("a message is a list that starts with its OSC address".into()),
    };
    if !addr.starts_with('/') {
        return Err(format!("the OSC address `{addr}` does not start with `/`"));
    }
    let args = values
        .enumerate()
        .map(|(i, value)| match value {
            Ok(mlua::Value::Integer(n)) => i32::try_from(n)
                .map(OscType::Int)
                .map_err(|_| format!("`{addr}` argument {}: {n} is beyond an int32", i + 1)),
            Ok(mlua::Value::Number(x)) => Ok(OscType::Float(x as f32)),
            Ok(mlua::Value::String(s)) => Ok(OscType::String(s.to_string_lossy())),
            Ok(mlua::Value::Boolean(b)) => Ok(OscType::Bool(b)),
            Ok(other) => Err(format!(
                "`{addr}` argument {}: a {} is not an OSC value",
                i + 1,
                other.type_name()
            )),
            Err(e) => Err(e.to_string()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    packet(addr, args)
}

/// The default live message: `/<param> <value>` as one float.
pub fn set(param: &str, value: &Value) -> Vec<u8> {
    let number = value.as_f64().unwrap_or(0.0) as f32;
    packet(format!("/{param}"), vec![OscType::Float(number)])
        .expect("a param name is a valid OSC address")
}

fn packet(addr: String, args: Vec<OscType>) -> Result<Vec<u8>, String> {
    rosc::encoder::encode(&OscPacket::Message(OscMessage { addr, args })).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(bytes: &[u8]) -> OscMessage {
        match rosc::decoder::decode_udp(bytes).expect("a packet").1 {
            OscPacket::Message(m) => m,
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn lua_values_become_typed_osc_arguments() {
        let lua = mlua::Lua::new();
        let table: mlua::Table = lua
            .load(r#"return {"/s_new", "sine", 1000, 440.5, true}"#)
            .eval()
            .expect("a table");
        let message = decoded(&encode(&table).expect("encodes"));
        assert_eq!(message.addr, "/s_new");
        assert_eq!(
            message.args,
            vec![
                OscType::String("sine".into()),
                OscType::Int(1000),
                OscType::Float(440.5),
                OscType::Bool(true)
            ]
        );
    }

    #[test]
    fn what_is_not_a_message_is_said() {
        let lua = mlua::Lua::new();
        let cases = [
            (
                r#"return {440}"#,
                "a message is a list that starts with its OSC address",
            ),
            (
                r#"return {"freq", 1}"#,
                "the OSC address `freq` does not start with `/`",
            ),
            (
                r#"return {"/n_set", {}}"#,
                "`/n_set` argument 1: a table is not an OSC value",
            ),
            (
                r#"return {"/n_set", 1 << 40}"#,
                "`/n_set` argument 1: 1099511627776 is beyond an int32",
            ),
        ];
        for (source, error) in cases {
            let table: mlua::Table = lua.load(source).eval().expect("a table");
            assert_eq!(encode(&table).unwrap_err(), error, "{source}");
        }
    }

    #[test]
    fn the_default_live_message_is_the_param_as_one_float() {
        let message = decoded(&set("freq", &serde_json::json!(660)));
        assert_eq!(message.addr, "/freq");
        assert_eq!(message.args, vec![OscType::Float(660.0)]);
    }
}
