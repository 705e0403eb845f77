//! What a sandboxed command may send to the person's terminal.
//!
//! A command on a terminal (its own pseudo-terminal, relayed to the caller's) writes
//! escape sequences, and most are the point: colours, cursor motion, a full-screen
//! interface. A few reach past the screen, into the person's machine:
//!
//! - OSC 52 writes the clipboard (kitty, WezTerm, foot, tmux pass it by default): what
//!   the person pastes into their shell next is the agent's;
//! - OSC 1337 / 5113 and the kitty graphics protocol (APC) transfer or read files;
//! - DCS strings carry requests the terminal answers (DECRQSS) and tmux's passthrough,
//!   which hands any of the above to the terminal outside tmux;
//! - `CSI 20 t` / `CSI 21 t` make the terminal type back a window title the command
//!   chose; sent as the command's last bytes, the answer lands in the person's shell.
//!
//! [`EscapeFilter`] passes everything else unchanged and drops these: OSC sequences
//! other than an allowlist of screen-only ones, every DCS, APC, PM and SOS string, and
//! the two title reports. It works on a byte stream cut anywhere (a sequence split
//! across reads is handled), 7-bit introducers and their UTF-8 encoded C1 forms alike.

/// Written to the person's terminal when a relayed command is done with it: the modes
/// a full-screen command may leave on that the shell does not expect (attributes,
/// mouse reporting in every encoding, bracketed paste, a hidden cursor). Leaving the
/// alternate screen is not among them: a terminal not on it would restore a stale
/// cursor position instead.
pub const DISPLAY_MODES_OFF: &[u8] =
    b"\x1b[0m\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l\x1b[?2004l\x1b[?25h";

/// OSC numbers that only change what is on the screen: window and icon titles (0, 1,
/// 2), palette and default colours and their resets (4, 10, 11, 12, 104, 110, 111,
/// 112), hyperlinks (8), shell prompt marks (133). Not the working directory (7): a
/// sandbox's path means nothing on the host, and some terminals open new tabs there.
pub const ALLOWED_OSC: [u32; 12] = [0, 1, 2, 4, 8, 10, 11, 12, 104, 110, 111, 112];
/// Shell integration marks (FinalTerm / OSC 133), allowed too.
const OSC_PROMPT_MARKS: u32 = 133;

/// Longest CSI sequence looked at; a longer one is dropped whole (terminals cap their
/// parameters far below this).
const MAX_CSI: usize = 64;
/// Most digits in an OSC number.
const MAX_OSC_DIGITS: usize = 6;

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;
const CAN: u8 = 0x18;
const SUB: u8 = 0x1a;
/// Lead byte of the UTF-8 encoding of U+0080..U+00BF (the C1 controls among them).
const C1_LEAD: u8 = 0xc2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ground,
    /// After ESC.
    Escape,
    /// After a UTF-8 lead byte 0xC2 (a C1 control may follow).
    C1Lead,
    /// CSI parameters and intermediates, buffered until the final byte.
    Csi,
    /// OSC number digits, buffered until `;` or the end decides.
    OscNumber,
    /// Inside an OSC string: passed (`true`) or dropped (`false`).
    OscString(bool),
    /// ESC inside an OSC string (`ESC \` ends it).
    OscStringEscape(bool),
    /// 0xC2 inside an OSC string (0xC2 0x9C, ST, ends it).
    OscStringC1Lead(bool),
    /// Inside a DCS, APC, PM or SOS string: dropped.
    DroppedString,
    DroppedStringEscape,
    DroppedStringC1Lead,
}

/// A streaming filter over what a command writes to a terminal (one per output
/// stream; see the module documentation for what it drops).
#[derive(Debug, Clone)]
pub struct EscapeFilter {
    state: State,
    /// The bytes of the sequence being decided (CSI, or an OSC's introducer and number).
    pending: Vec<u8>,
    /// Continuation bytes still due for the UTF-8 character being passed: a byte
    /// 0x80..=0x9F that continues none is a raw 8-bit C1 control, which some
    /// terminals obey, and is dropped.
    utf8_due: u8,
}

impl Default for EscapeFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl EscapeFilter {
    /// A filter in its ground state.
    pub fn new() -> EscapeFilter {
        EscapeFilter {
            state: State::Ground,
            pending: Vec::new(),
            utf8_due: 0,
        }
    }

    /// Appends to `out` what of `input` may reach the terminal.
    pub fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        for &b in input {
            self.step(b, out);
        }
    }

    /// `input` filtered, as a new buffer.
    pub fn filtered(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        self.filter(input, &mut out);
        out
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => match b {
                ESC => {
                    self.utf8_due = 0;
                    self.state = State::Escape;
                }
                C1_LEAD => {
                    self.utf8_due = 0;
                    self.state = State::C1Lead;
                }
                0x80..=0xbf if self.utf8_due > 0 => {
                    self.utf8_due -= 1;
                    out.push(b);
                }
                // A raw 8-bit C1 control (no character is being continued).
                0x80..=0x9f => {}
                _ => {
                    self.utf8_due = match b {
                        0xc3..=0xdf => 1,
                        0xe0..=0xef => 2,
                        0xf0..=0xf4 => 3,
                        _ => 0,
                    };
                    out.push(b);
                }
            },
            State::Escape => match b {
                b'[' => self.start(State::Csi, &[ESC, b'[']),
                b']' => self.start(State::OscNumber, &[ESC, b']']),
                b'P' | b'_' | b'^' | b'X' => self.state = State::DroppedString,
                // ESC ESC: the first is dropped as a lone escape, the second starts over.
                ESC => {}
                C1_LEAD => {
                    out.push(ESC);
                    self.state = State::C1Lead;
                }
                _ => {
                    out.extend_from_slice(&[ESC, b]);
                    self.state = State::Ground;
                }
            },
            State::C1Lead => match b {
                0x9b => self.start(State::Csi, &[C1_LEAD, b]),
                0x9d => self.start(State::OscNumber, &[C1_LEAD, b]),
                0x90 | 0x9f | 0x9e | 0x98 => self.state = State::DroppedString,
                ESC => {
                    out.push(C1_LEAD);
                    self.state = State::Escape;
                }
                // Another lead byte: the first was a stray one.
                C1_LEAD => out.push(C1_LEAD),
                // U+0080..U+00BF: printable, or a C1 control with no string or
                // parameters (NEL, ST, ...), which only moves the cursor.
                0x80..=0xbf => {
                    out.extend_from_slice(&[C1_LEAD, b]);
                    self.state = State::Ground;
                }
                // Not a continuation: the lead byte was stray; `b` starts afresh.
                _ => {
                    out.push(C1_LEAD);
                    self.state = State::Ground;
                    self.step(b, out);
                }
            },
            State::Csi => {
                self.pending.push(b);
                match b {
                    // Final byte: the sequence is whole.
                    0x40..=0x7e => {
                        if !is_title_report(&self.pending) {
                            out.extend_from_slice(&self.pending);
                        }
                        self.reset();
                    }
                    CAN | SUB => self.reset(),
                    // A control that introduces another sequence aborts this one.
                    ESC | C1_LEAD => {
                        self.reset();
                        self.state = if b == ESC {
                            State::Escape
                        } else {
                            State::C1Lead
                        };
                    }
                    _ if self.pending.len() > MAX_CSI => self.reset(),
                    _ => {}
                }
            }
            State::OscNumber => match b {
                b'0'..=b'9' if self.digits() < MAX_OSC_DIGITS => self.pending.push(b),
                b';' => {
                    let keep = self.osc_allowed();
                    if keep {
                        out.extend_from_slice(&self.pending);
                        out.push(b);
                    }
                    self.pending.clear();
                    self.state = State::OscString(keep);
                }
                // A whole OSC without arguments (`ESC ] 104 BEL`).
                BEL => {
                    if self.osc_allowed() {
                        out.extend_from_slice(&self.pending);
                        out.push(b);
                    }
                    self.reset();
                }
                ESC | C1_LEAD => {
                    let keep = self.osc_allowed();
                    if keep {
                        out.extend_from_slice(&self.pending);
                    }
                    self.pending.clear();
                    self.state = if b == ESC {
                        State::OscStringEscape(keep)
                    } else {
                        State::OscStringC1Lead(keep)
                    };
                }
                CAN | SUB => self.reset(),
                // Not a number we know (too long, or a letter: OSC `l`, `L`, ...).
                _ => {
                    self.pending.clear();
                    self.state = State::OscString(false);
                }
            },
            State::OscString(keep) => match b {
                BEL => {
                    if keep {
                        out.push(b);
                    }
                    self.state = State::Ground;
                }
                ESC => self.state = State::OscStringEscape(keep),
                C1_LEAD => self.state = State::OscStringC1Lead(keep),
                CAN | SUB => self.state = State::Ground,
                _ => {
                    if keep {
                        out.push(b);
                    }
                }
            },
            State::OscStringEscape(keep) => {
                if b == b'\\' {
                    if keep {
                        out.extend_from_slice(&[ESC, b'\\']);
                    }
                    self.state = State::Ground;
                } else {
                    // A terminal ends the string at any ESC and starts a new sequence.
                    if keep {
                        out.extend_from_slice(&[ESC, b'\\']);
                    }
                    self.state = State::Escape;
                    self.step(b, out);
                }
            }
            State::OscStringC1Lead(keep) => {
                if b == 0x9c {
                    if keep {
                        out.extend_from_slice(&[C1_LEAD, b]);
                    }
                    self.state = State::Ground;
                } else {
                    if keep {
                        out.push(C1_LEAD);
                    }
                    self.state = State::OscString(keep);
                    self.step(b, out);
                }
            }
            // Only ST (or CAN, SUB) ends these strings, not BEL. Where the filter
            // and a terminal could disagree, the filter drops more, never less.
            State::DroppedString => match b {
                ESC => self.state = State::DroppedStringEscape,
                C1_LEAD => self.state = State::DroppedStringC1Lead,
                CAN | SUB => self.state = State::Ground,
                _ => {}
            },
            State::DroppedStringEscape => {
                if b == b'\\' {
                    self.state = State::Ground;
                } else if b == ESC {
                    // ESC ESC: an escaped ESC inside the string (tmux's passthrough).
                    self.state = State::DroppedString;
                } else {
                    self.state = State::Escape;
                    self.step(b, out);
                }
            }
            State::DroppedStringC1Lead => {
                if b == 0x9c {
                    self.state = State::Ground;
                } else {
                    self.state = State::DroppedString;
                    self.step(b, out);
                }
            }
        }
    }

    fn start(&mut self, state: State, introducer: &[u8]) {
        self.pending.clear();
        self.pending.extend_from_slice(introducer);
        self.state = state;
    }

    fn reset(&mut self) {
        self.pending.clear();
        self.state = State::Ground;
    }

    /// Digits of the OSC number so far (after the two-byte introducer).
    fn digits(&self) -> usize {
        self.pending.len().saturating_sub(2)
    }

    fn osc_allowed(&self) -> bool {
        let digits = &self.pending[2.min(self.pending.len())..];
        if digits.is_empty() {
            return false;
        }
        let n = digits
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        ALLOWED_OSC.contains(&n) || n == OSC_PROMPT_MARKS
    }
}

/// `CSI 20 t` and `CSI 21 t` (and with further parameters): the terminal types back its
/// icon label or window title.
fn is_title_report(seq: &[u8]) -> bool {
    let Some((&b't', body)) = seq.split_last() else {
        return false;
    };
    let params = if body.starts_with(&[ESC, b'[']) || body.starts_with(&[C1_LEAD, 0x9b]) {
        &body[2..]
    } else {
        return false;
    };
    let digits = params.iter().take_while(|b| b.is_ascii_digit()).count();
    let first = &params[..digits];
    let nonzero = first.iter().position(|&d| d != b'0').unwrap_or(digits);
    matches!(&first[nonzero..], b"20" | b"21")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn filtered(input: &[u8]) -> Vec<u8> {
        EscapeFilter::new().filtered(input)
    }

    #[test]
    fn text_colours_and_cursor_motion_pass_unchanged() {
        for ok in [
            &b"plain text, tabs\tand newlines\r\n"[..],
            b"\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x1b[?1049h\x1b[?25l",
            "ünïcødé ✓ © \u{85}".as_bytes(),
            b"\x1b]0;my title\x07\x1b]2;other\x1b\\",
            b"\x1b]8;;https://example.invalid/\x1b\\link\x1b]8;;\x1b\\",
            b"\x1b]133;A\x07\x1b]104\x07\x1b]11;?\x07",
            b"\x1b(B\x1b7\x1b8\x1bc",
            b"\x1b[22;0t\x1b[23;0t\x1b[8;24;80t",
        ] {
            assert_eq!(filtered(ok), ok, "{}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn what_reaches_past_the_screen_is_dropped_and_the_rest_kept() {
        let cases: [(&[u8], &[u8]); 14] = [
            (b"a\x1b]52;c;ZWNobyBwd25lZA==\x07b", b"ab"),
            (b"a\x1b]52;c;ZWNobyBwd25lZA==\x1b\\b", b"ab"),
            ("a\u{9d}52;c;eA==\u{9c}b".as_bytes(), b"ab"),
            (b"a\x1b]1337;File=name=eA==:eA==\x07b", b"ab"),
            (b"a\x1b]7;file://host/tmp/x\x07b", b"ab"),
            (b"a\x1b]5113;ac=send\x1b\\b", b"ab"),
            (b"a\x1bP$qm\x1b\\b", b"ab"),
            (b"a\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\b", b"ab"),
            (b"a\x1b_Gf=100,t=f;L2V0Yy9wYXNzd2Q=\x1b\\b", b"ab"),
            (b"a\x1b[21tb\x1b[20;1tc", b"abc"),
            ("a\u{9b}21tb".as_bytes(), b"ab"),
            (b"a\x1b]52;c;eA==\x1b[1mb", b"a\x1b[1mb"),
            // An ESC before a C1 introducer does not hide it.
            (b"a\x1b\xc2\x9d52;c;eA==\x07b", b"a\x1bb"),
            // Raw 8-bit C1 controls (no UTF-8 character continued) go; real UTF-8 stays.
            (
                b"a\x9d52;c;eA==\x07\x9b21tb\xc3\xa9\xe2\x9c\x93",
                b"a52;c;eA==\x0721tb\xc3\xa9\xe2\x9c\x93",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                filtered(input),
                want,
                "{}",
                String::from_utf8_lossy(input).escape_debug()
            );
        }
    }

    #[test]
    fn an_unterminated_osc_swallows_nothing_after_an_escape() {
        // A terminal ends the OSC at the next ESC; so does the filter.
        assert_eq!(filtered(b"\x1b]52;c;eA==\x1bcX"), b"\x1bcX");
        assert_eq!(filtered(b"\x1b]0;t\x1b[1mX"), b"\x1b]0;t\x1b\\\x1b[1mX");
    }

    proptest! {
        /// However the stream is cut into reads, the output is the same.
        #[test]
        fn the_output_does_not_depend_on_how_the_input_is_cut(
            input in proptest::collection::vec(
                prop_oneof![
                    Just(0x1bu8), Just(b']'), Just(b'['), Just(b'5'), Just(b'2'), Just(b';'),
                    Just(0x07u8), Just(b'\\'), Just(0xc2u8), Just(0x9du8), Just(0x9cu8),
                    Just(b'P'), Just(b't'), Just(b'1'), Just(b'0'), any::<u8>(),
                ],
                0..200,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let whole = filtered(&input);
            let mut f = EscapeFilter::new();
            let mut out = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut from = 0;
            for c in cuts.into_iter().chain([input.len()]) {
                f.filter(&input[from..c], &mut out);
                from = c;
            }
            prop_assert_eq!(out, whole);
        }

        /// No clipboard write survives, whatever surrounds it.
        #[test]
        fn no_osc_52_survives(
            before in proptest::collection::vec(any::<u8>(), 0..40),
            payload in "[A-Za-z0-9+/=]{0,40}",
            after in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut input = before.clone();
            input.extend_from_slice(b"\x1b]52;c;");
            input.extend_from_slice(payload.as_bytes());
            input.push(0x07);
            input.extend_from_slice(&after);
            let out = filtered(&input);
            let found = out.windows(5).any(|w| w == b"\x1b]52;");
            prop_assert!(!found, "{:?}", String::from_utf8_lossy(&out));
        }
    }
}
