//! Crossfade on replace against real jackd and csound: a non-live edit replaces the sine on
//! the recorded path, and the recording shows no click (no sample-to-sample step larger than
//! the steady tone's) and no gap. With `fade = 0` the same edits switch at once, and the
//! clicks show: the measure can tell.

mod common;

use cloud_orchestra::analysis::{analyze, largest_step, read_channel};
use common::*;
use std::path::Path;
use std::time::Duration;

const SINE: &str = r#"local tone = block "tone" { module = "MODULE", freq = 440 FADE }
local out  = block "out"  { module = "dac" }
tone >> out
"#;

/// The steady tone's largest step, and the largest anywhere from then on, with when (s).
struct Steps {
    steady: f32,
    largest: f32,
    at_s: f64,
}

/// Play `SINE` as `module` with `fade` (`""`: the default), replace the tone three times
/// (each edit moves its `phase`, which is not live), and measure the recording's steps. The
/// old and the new instance start at different moments, so their cycles are out of step by
/// chance.
fn replaced_three_times(test: &str, module: &str, fade: &str) -> Steps {
    let script = SINE.replace("MODULE", module).replace("FADE", fade);
    let stage = Stage::with_script(test, "song.lua", &script);
    let (cmd, wav) = run_recorded(&stage.server, &stage.script, stage.dir.path(), &[]);
    let mut run = Running::spawn(cmd);
    run.wait_for("playing:", Duration::from_secs(60));
    run.wait_for("first sound at the DAC", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let mut current = "freq = 440".to_string();
    for phase in ["0.25", "0.5", "0.75"] {
        let before = pids(stage.dir.path())["tone"];
        let next = format!("freq = 440, phase = {phase}");
        let text = std::fs::read_to_string(&stage.script).unwrap();
        save(&stage.script, &text.replacen(&current, &next, 1));
        current = next;
        run.wait_for(
            &format!("~ replace tone ({module}) on localhost"),
            Duration::from_secs(10),
        );
        let applied = run.wait_for("applied in", Duration::from_secs(10));
        eprintln!("{test}: {}", applied.trim());
        assert_eq!(
            applied.contains(", crossfaded over 20 ms"),
            fade.is_empty(),
            "{applied}"
        );
        assert!(
            !run.stderr
                .iter()
                .any(|l| l.contains("without its crossfade")),
            "{}",
            run.stderr.join("\n")
        );
        assert_ne!(pids(stage.dir.path())["tone"], before, "replaced");
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());
    steps_of(&wav)
}

fn steps_of(wav: &Path) -> Steps {
    let (left, rate) = read_channel(wav, 0).unwrap();
    let report = analyze(&left, rate);
    assert!(report.longest_gap_ms < 5.0, "no gap: {report:?}");
    assert!((report.frequency_hz - 440.0).abs() < 4.4, "{report:?}");
    let first = (report.first_sound_s.expect("sound") * rate as f64) as usize;
    let ms = |n: usize| n * rate as usize / 1000;
    // From a little after the first sound (its own edge was switched at once) to a little
    // before the end; the steady part is the 700 ms before the first edit (which came a
    // second after the first sound).
    let steady = largest_step(&left[first + ms(100)..first + ms(800)]).1;
    let end = left.len() - ms(50);
    let (at, largest) = largest_step(&left[first + ms(100)..end]);
    Steps {
        steady,
        largest,
        at_s: (first + ms(100) + at) as f64 / rate as f64,
    }
}

/// The crossfaded replaces of `module` leave no step beyond the steady tone's.
fn crossfades_without_a_click(test: &str, module: &str) {
    let steps = replaced_three_times(test, module, "");
    eprintln!(
        "{module} crossfaded: steady step {:.5}, largest {:.5} at {:.3} s ({:.3}×)",
        steps.steady,
        steps.largest,
        steps.at_s,
        steps.largest / steps.steady
    );
    assert!(steps.steady > 0.01, "a steady tone: {}", steps.steady);
    // A raised-cosine fade of 20 ms adds at most 0.2 % to a 440 Hz sine's steepest step.
    assert!(
        steps.largest <= 1.1 * steps.steady,
        "no click: a step of {} at {:.3} s, the steady tone's largest is {}",
        steps.largest,
        steps.at_s,
        steps.steady
    );
}

#[test]
fn a_replaced_block_on_the_recorded_path_crossfades_without_a_click_or_a_gap() {
    crossfades_without_a_click("crossfade", "sine");
}

#[test]
fn a_replaced_pure_data_block_crossfades_without_a_click() {
    crossfades_without_a_click("crossfade-pd", "pd_sine");
}

#[test]
fn a_replaced_supercollider_block_crossfades_without_a_click() {
    crossfades_without_a_click("crossfade-sc", "sc_sine");
}

#[test]
fn with_fade_zero_a_replace_switches_at_once_and_the_click_shows() {
    let steps = replaced_three_times("no-crossfade", "sine", ", fade = 0");
    eprintln!(
        "fade = 0: steady step {:.5}, largest {:.5} at {:.3} s ({:.1}×)",
        steps.steady,
        steps.largest,
        steps.at_s,
        steps.largest / steps.steady
    );
    // Each hard switch steps twice (the new instance connected, the old one cut), each by
    // its instance's value at that moment: three replaces without one step past twice the
    // steady tone's would take six switches near zero crossings.
    assert!(
        steps.largest > 2.0 * steps.steady,
        "the hard switch clicks: {} vs {}",
        steps.largest,
        steps.steady
    );
}
