//! The dashboard's keys and what each asks of the pipeline: a small state machine with no
//! terminal, so tests press keys and read the commands.
//!
//! `q` stops feeding (the devices in flight finish); a second `q` or Ctrl-C stops at once.
//! `p` pauses and resumes feeding, `r` sends the failed boards round again, `?` shows the
//! help (Esc hides it).

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::station::command::{Command, Feed};

/// What the operator has asked so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// `p` was pressed an odd number of times.
    pub paused: bool,
    /// `q` was pressed: the feed is stopping.
    pub stopping: bool,
    /// The help is shown.
    pub help: bool,
}

impl Keys {
    /// The command `key` sends, if any (and the view's own state, such as the help).
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Command> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => Some(Command::Interrupt),
            _ if ctrl => None,
            KeyCode::Char('q' | 'Q') => {
                if self.stopping {
                    Some(Command::Interrupt)
                } else {
                    self.stopping = true;
                    Some(Command::Feed(Feed::Stop))
                }
            }
            // Once stopping, nothing is fed again: pausing means nothing.
            KeyCode::Char('p' | 'P') if !self.stopping => {
                self.paused = !self.paused;
                Some(Command::Feed(if self.paused {
                    Feed::Pause
                } else {
                    Feed::Resume
                }))
            }
            KeyCode::Char('r' | 'R') => Some(Command::RetryFailed),
            KeyCode::Char('?' | 'h') => {
                self.help = !self.help;
                None
            }
            KeyCode::Esc => {
                self.help = false;
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(keys: &mut Keys, c: char) -> Option<Command> {
        keys.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    }

    #[test]
    fn p_toggles_the_feed_and_q_twice_stops_at_once() {
        let mut k = Keys::default();
        assert_eq!(press(&mut k, 'p'), Some(Command::Feed(Feed::Pause)));
        assert_eq!(press(&mut k, 'p'), Some(Command::Feed(Feed::Resume)));
        assert_eq!(press(&mut k, 'r'), Some(Command::RetryFailed));
        assert_eq!(press(&mut k, 'x'), None);
        assert_eq!(press(&mut k, 'q'), Some(Command::Feed(Feed::Stop)));
        // Stopping is final: `p` does nothing, a second `q` stops at once.
        assert_eq!(press(&mut k, 'p'), None);
        assert_eq!(press(&mut k, 'q'), Some(Command::Interrupt));
    }

    #[test]
    fn ctrl_c_stops_at_once_and_help_toggles_without_a_command() {
        let mut k = Keys::default();
        assert_eq!(press(&mut k, '?'), None);
        assert!(k.help);
        assert_eq!(
            k.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
            None
        );
        assert!(!k.help);
        // Ctrl-Q or Ctrl-P are not `q` or `p`.
        assert_eq!(
            k.on_key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::CONTROL)),
            None
        );
        assert_eq!(
            k.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Command::Interrupt)
        );
        let mut release = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(k.on_key(release), None);
        assert!(!k.stopping);
    }
}
