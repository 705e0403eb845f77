//! A call that may run no program: once its binary runs (the one `execveat` the filter
//! lets through), every exec it attempts is refused (EACCES) and reported, and a
//! program that runs nothing works as before.

use airlock_enforcer::no_exec::{
    exec_binary_fd, receive_listener, report_pair, supervise_execs_until_exit, AllowedExec,
    ExecVectors, NoExecFilter,
};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

struct Ran {
    code: Option<i32>,
    stdout: String,
    /// The shell's own stderr.
    stderr: String,
    /// What the reporter wrote.
    reports: String,
}

/// Runs `/bin/sh -c script` as a call that may run no program.
fn run_sh_running_no_program(script: &str) -> Ran {
    run_sh_allowing(script, vec![])
}

/// Runs `/bin/sh -c script` as a call that may run only what `allowed` admits.
fn run_sh_allowing(script: &str, allowed: Vec<AllowedExec>) -> Ran {
    let sh = std::fs::File::open("/bin/sh").unwrap();
    let (ours, theirs) = report_pair().unwrap();
    let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
    let vectors = ExecVectors::new(&argv, &env).unwrap();
    let filter = NoExecFilter::allowing_only(sh.as_raw_fd());
    let (sh_fd, report_fd) = (sh.as_raw_fd(), theirs.as_raw_fd());
    let (report_r, report_w) = std::io::pipe().unwrap();
    let mut cmd = Command::new("/bin/false");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: between fork and exec: installs the filter (no allocation) and execs.
    unsafe {
        cmd.pre_exec(move || {
            filter.install_on_current_thread(report_fd)?;
            Err(exec_binary_fd(sh_fd, &vectors))
        });
    }
    let mut child = cmd.spawn().expect("the binary's own execveat is allowed");
    drop(cmd);
    drop(theirs);
    let listener = receive_listener(&ours).expect("the child sent its listener");
    let reporter = std::thread::spawn(move || {
        supervise_execs_until_exit(
            listener,
            std::fs::File::from(std::os::fd::OwnedFd::from(report_w)),
            "refused by profile `test`".into(),
            vec![],
            allowed,
        )
    });
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let code = child.wait().unwrap().code();
    reporter
        .join()
        .expect("the reporter ends when the call does");
    let mut reports = String::new();
    let mut r = report_r;
    r.read_to_string(&mut reports).unwrap();
    Ran {
        code,
        stdout,
        stderr,
        reports,
    }
}

#[test]
fn every_exec_after_the_binary_is_refused_and_reported() {
    let ran = run_sh_running_no_program("/bin/true; echo after");
    assert!(
        ran.stderr.contains("Permission denied"),
        "the exec failed with EACCES: {:?}",
        ran.stderr
    );
    assert!(
        ran.reports
            .contains("airlock: refused by profile `test`; it tried to run `/bin/true`"),
        "the attempt was reported with the program: {:?}",
        ran.reports
    );
    assert_eq!(ran.stdout, "after\n", "the shell itself ran on");
    // exec by any route: a relative PATH lookup, execveat of another descriptor.
    let ran = run_sh_running_no_program("exec true");
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.reports.contains("it tried to run `/usr/bin/true`"),
        "{:?}",
        ran.reports
    );
}

#[test]
fn a_call_that_runs_nothing_works_and_reports_nothing() {
    let ran = run_sh_running_no_program("echo hello; exit 3");
    assert_eq!((ran.code, ran.stdout.as_str()), (Some(3), "hello\n"));
    assert_eq!(ran.reports, "");
}

#[test]
fn only_the_exact_path_and_name_allowed_run() {
    let allowed = vec![AllowedExec::Exact {
        path: "/bin/echo".into(),
        argv0: "/bin/echo".into(),
    }];
    // The allowed exec runs; the same binary under another name, or another binary,
    // is refused and reported.
    let ran = run_sh_allowing(
        "/bin/echo allowed; /bin/true; exec -a other /bin/echo x",
        allowed,
    );
    assert_eq!(ran.stdout, "allowed\n", "{:?}", ran.stderr);
    assert!(
        ran.reports.contains("it tried to run `/bin/true`"),
        "{:?}",
        ran.reports
    );
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/bin/echo", dir.path().join("echo")).unwrap();
    let link = dir.path().join("echo").display().to_string();
    let allowed_dir = vec![AllowedExec::In(dir.path().display().to_string())];
    let ran = run_sh_allowing(&format!("{link} in-dir; /bin/echo outside"), allowed_dir);
    assert_eq!(ran.stdout, "in-dir\n", "{:?}", ran.stderr);
    assert!(
        ran.reports.contains("it tried to run `/bin/echo`"),
        "{:?}",
        ran.reports
    );
}

#[test]
fn unconfined_the_same_exec_runs() {
    let out = Command::new("/bin/sh")
        .args(["-c", "/bin/true; echo after"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}
