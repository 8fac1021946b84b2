//! `call.report`: one side's end-of-call summary from its SDK (mean round-trip time and
//! audio loss), kept in the quality histograms of `/metrics`. Once per side of an ended
//! call: the report is sent when the call ends on that side, which the server has seen
//! first (the side's own hang-up, or the `call.ended` it sent).

use rand::RngCore;

use crate::protocol::*;

use super::call::{refuse, Refusal};
use super::Hub;

/// The longest round trip a report may claim (a minute: anything above is not a call).
const MAX_RTT_MS: f64 = 60_000.0;

impl<R: RngCore> Hub<R> {
    pub(super) fn report(
        &mut self,
        user: &UserId,
        id: &CallId,
        duration_ms: u64,
        rtt_ms: Option<f64>,
        loss: Option<f64>,
    ) -> Result<(), Refusal> {
        if rtt_ms.is_some_and(|r| !(0.0..=MAX_RTT_MS).contains(&r)) {
            return Err(refuse(ErrorCode::BadRequest, "rtt_ms must be 0 to 60000"));
        }
        if loss.is_some_and(|l| !(0.0..=1.0).contains(&l)) {
            return Err(refuse(ErrorCode::BadRequest, "loss must be a fraction, 0 to 1"));
        }
        if self.call_ids.contains_key(id) {
            return Err(refuse(ErrorCode::BadRequest, "report a call once it has ended"));
        }
        let Some(e) = self.ended.get_mut(id) else {
            return Err(refuse(ErrorCode::UnknownCall, format!("no call {id} ended lately")));
        };
        let side = if e.caller == *user {
            0
        } else if e.callee == *user {
            1
        } else {
            return Err(refuse(ErrorCode::NotParticipant, "not a party of this call"));
        };
        if std::mem::replace(&mut e.reported[side], true) {
            // A resend after a blip: counted once.
            self.metrics.count("call_reports", "duplicate");
            return Ok(());
        }
        self.metrics.count("call_reports", "recorded");
        // A call that never connected has no media figures worth keeping.
        if duration_ms > 0 {
            if let Some(r) = rtt_ms {
                self.metrics.call_rtt.observe(r / 1000.0);
            }
            if let Some(l) = loss {
                self.metrics.call_loss.observe(l);
            }
        }
        Ok(())
    }
}
