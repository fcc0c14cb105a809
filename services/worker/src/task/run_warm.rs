//! A task rendered by a warm Blender session: its frames fed one by one
//! to a Blender kept alive between tasks (`warm_session.rs`), as an
//! [`Action`] like any process.

use std::sync::Arc;

use crate::command;
use crate::sandbox::{MemoryProbe, TaskSandbox};
use crate::task::run::{Action, ActionEnd, ActionEvent, ActionFuture, OutputPlace};
use crate::warm_pool::WarmPool;
use crate::warm_session::{self, DriverLine, WarmSession, WarmSessionError};

/// Frames of one task, rendered by a session lent by the pool.
pub struct WarmAction {
    pool: Arc<WarmPool>,
    session: Option<Box<WarmSession>>,
    reused: bool,
    /// The output pattern, in the session's output directory.
    output: String,
    frames: Vec<i64>,
    /// Index in `frames` of the frame being rendered, once requested.
    rendering: Option<usize>,
    next: usize,
    /// An ending to report after the line that announced it.
    pending: Option<ActionEnd>,
    place: OutputPlace,
}

impl WarmAction {
    /// Prepares `session` for a task rendering `frames` to `output` (a `-o`
    /// pattern with `{{Session.WorkingDirectory}}` standing for the task's
    /// directory, which becomes the session's output directory).
    pub fn new(
        pool: Arc<WarmPool>,
        mut session: WarmSession,
        reused: bool,
        output: &str,
        frames: Vec<i64>,
    ) -> Result<Self, WarmSessionError> {
        let place = session.fresh_outputs()?;
        let output =
            command::substitute_working_directory(&[output.to_owned()], &place.workdir).concat();
        Ok(Self {
            pool,
            session: Some(Box::new(session)),
            reused,
            output,
            frames,
            rendering: None,
            next: 0,
            pending: None,
            place,
        })
    }

    fn failed(&self, what: String) -> ActionEvent {
        ActionEvent::Ended(ActionEnd::Failed(what))
    }

    async fn next_event(&mut self) -> ActionEvent {
        if let Some(end) = self.pending.take() {
            return ActionEvent::Ended(end);
        }
        let Some(session) = self.session.as_deref_mut() else {
            return self.failed("the warm blender session is gone".to_owned());
        };
        loop {
            let Some(index) = self.rendering else {
                let Some(&frame) = self.frames.get(self.next) else {
                    return ActionEvent::Ended(ActionEnd::Done);
                };
                if let Err(error) = session.request(frame, &self.output) {
                    let id = session.id();
                    return self.failed(format!(
                        "warm blender session {id} stopped before frame {frame}: {error}"
                    ));
                }
                self.rendering = Some(self.next);
                continue;
            };
            let frame = self.frames[index];
            let id = session.id();
            tokio::select! {
                biased;
                line = session.lines.recv() => {
                    let Some(line) = line else {
                        return self.failed(format!(
                            "warm blender session {id} closed its output while rendering frame {frame}"
                        ));
                    };
                    match warm_session::parse_driver_line(&line) {
                        Some(DriverLine::Done { frame: done }) if done == frame => {
                            session.frame_done();
                            self.rendering = None;
                            self.next += 1;
                        }
                        Some(DriverLine::Failed { message, .. }) => {
                            self.pending = Some(ActionEnd::Failed(format!(
                                "frame {frame} failed in warm blender session {id}: {message}"
                            )));
                            return ActionEvent::Line(line);
                        }
                        _ => return ActionEvent::Line(line),
                    }
                }
                status = session.child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    return self.failed(format!(
                        "warm blender session {id} ended ({status}) while rendering frame {frame}"
                    ));
                }
            }
        }
    }
}

impl Action for WarmAction {
    fn next(&mut self) -> ActionFuture<'_, ActionEvent> {
        Box::pin(self.next_event())
    }

    fn kill(&mut self) -> ActionFuture<'_, ()> {
        Box::pin(async move {
            if let Some(session) = self.session.as_deref_mut() {
                tracing::warn!(session = session.id(), "killing warm blender session");
                session.kill_and_wait().await;
            }
        })
    }

    fn sandbox(&self) -> Option<&TaskSandbox> {
        self.session.as_deref().map(WarmSession::sandbox)
    }

    fn memory_probe(&self) -> Option<MemoryProbe> {
        let session = self.session.as_deref()?;
        Some(session.sandbox().memory_probe(session.child.id()?))
    }

    fn outputs(&self) -> &OutputPlace {
        &self.place
    }

    fn note(&self) -> Option<String> {
        let session = self.session.as_ref()?;
        Some(match self.reused {
            true => format!(
                "kiln: rendering in warm blender session {} ({} frames rendered before)",
                session.id(),
                session.frames_rendered()
            ),
            false => format!(
                "kiln: rendering in new warm blender session {}",
                session.id()
            ),
        })
    }

    fn finish(&mut self, reusable: bool) {
        if let Some(session) = self.session.take()
            && reusable
        {
            self.pool.put_back(*session);
        }
    }
}
