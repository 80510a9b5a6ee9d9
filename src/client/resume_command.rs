//! The command line that continues an interrupted multipart transfer: the one the user ran,
//! with `--resume UPLOAD_ID`, quoted for a POSIX shell so it can be pasted as printed.

/// `args` (the program first) with any earlier `--resume` replaced by `upload_id`; a token
/// given on the command line is not repeated on the screen.
pub fn resume_command(args: &[String], upload_id: &str) -> String {
    let mut kept: Vec<String> = Vec::with_capacity(args.len() + 2);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--resume" || arg == "--token" {
            let value = iter.next();
            if arg == "--token" && value.is_some() {
                kept.push("--token".into());
                kept.push("\"$FLEETLOAD_TOKEN\"".into());
            }
            continue;
        }
        if arg.starts_with("--resume=") {
            continue;
        }
        if arg.starts_with("--token=") {
            kept.push("--token=\"$FLEETLOAD_TOKEN\"".into());
            continue;
        }
        kept.push(quote(arg));
    }
    kept.push("--resume".into());
    kept.push(quote(upload_id));
    kept.join(" ")
}

/// Bare when only harmless characters, else in single quotes.
fn quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_command_run_is_repeated_with_the_upload_id() {
        let cmd = resume_command(
            &args(&[
                "fleetload",
                "upload",
                "devices.csv",
                "--action",
                "register-prepaid",
            ]),
            "0190-ab",
        );
        assert_eq!(
            cmd,
            "fleetload upload devices.csv --action register-prepaid --resume 0190-ab"
        );
    }

    #[test]
    fn an_earlier_resume_is_replaced_and_odd_arguments_are_quoted() {
        let cmd = resume_command(
            &args(&[
                "./fleetload",
                "upload",
                "my devices.csv",
                "--resume",
                "old",
                "--resume=older",
                "--tenant",
                "it's",
            ]),
            "new",
        );
        assert_eq!(
            cmd,
            "./fleetload upload 'my devices.csv' --tenant 'it'\\''s' --resume new"
        );
    }

    #[test]
    fn a_token_is_not_printed() {
        let cmd = resume_command(
            &args(&[
                "fleetload",
                "upload",
                "f.csv",
                "--token",
                "secret.jwt.value",
                "--token=other",
            ]),
            "id",
        );
        assert!(!cmd.contains("secret") && !cmd.contains("other"), "{cmd}");
        assert_eq!(
            cmd,
            "fleetload upload f.csv --token \"$FLEETLOAD_TOKEN\" --token=\"$FLEETLOAD_TOKEN\" --resume id"
        );
    }
}
