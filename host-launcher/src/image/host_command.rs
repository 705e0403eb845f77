//! Running the host programs an image build calls (`apt-get`, `dpkg-deb`,
//! `mmdebstrap`): each must succeed, and a failure says which step it was, how the
//! program ended and the last lines of its stderr.

use std::io::BufRead;
use std::process::{Command, Stdio};

/// How many of a failed command's last stderr lines its error keeps.
const STDERR_TAIL_LINES: usize = 6;

/// A command that could not be started or did not succeed.
#[derive(Debug)]
pub struct CommandFailed {
    /// The step, as the caller named it.
    pub what: String,
    /// Its exit status, or why it never had one.
    pub status: String,
    /// The last lines of its stderr, joined with ` | `.
    pub stderr: String,
}

/// Runs `cmd` to completion, handing each line of its stderr to `line` (progress) and
/// keeping the last ones for the error. Its stdin and stdout are whatever `cmd` says
/// (inherited unless set).
pub fn run(cmd: &mut Command, what: &str, line: &dyn Fn(&str)) -> Result<(), CommandFailed> {
    let failed = |status: String, stderr: String| CommandFailed {
        what: what.to_string(),
        status,
        stderr,
    };
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed("could not start".into(), e.to_string()))?;
    let mut tail: std::collections::VecDeque<String> = Default::default();
    if let Some(err) = child.stderr.take() {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            line(&l);
            tail.push_back(l);
            if tail.len() > STDERR_TAIL_LINES {
                tail.pop_front();
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| failed("could not be waited for".into(), e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(
            status.to_string(),
            tail.into_iter().collect::<Vec<_>>().join(" | "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_step_its_status_and_the_last_stderr_lines() {
        let seen = std::cell::RefCell::new(Vec::new());
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do echo line$i >&2; done; exit 3",
        ]);
        let e = run(&mut cmd, "the step", &|l| {
            seen.borrow_mut().push(l.to_string())
        })
        .unwrap_err();
        assert_eq!(e.what, "the step");
        assert!(e.status.contains('3'), "{}", e.status);
        assert_eq!(e.stderr, "line3 | line4 | line5 | line6 | line7 | line8");
        assert_eq!(seen.borrow().len(), 8);
        run(&mut Command::new("true"), "true", &|_| {}).unwrap();
        let e = run(
            &mut Command::new("/nonexistent/program"),
            "missing",
            &|_| {},
        )
        .unwrap_err();
        assert_eq!(e.status, "could not start");
    }
}
