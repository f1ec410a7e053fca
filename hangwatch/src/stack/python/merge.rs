//! Putting the Python frames where they run: before each native `_PyEval_EvalFrameDefault`
//! frame (innermost first, both lists), the Python frames of that call. The innermost
//! calls are matched first, so a native walk cut short, or a Python chain that ends early
//! (a greenlet's frames start at its own `run`), still places the frames that match; what
//! cannot be placed is said, not guessed.
use crate::stack::Frame;

/// The native function that runs Python frames.
pub const EVAL_FUNCTION: &str = "_PyEval_EvalFrameDefault";

/// `native` with each group of `calls` inserted before its `_PyEval_EvalFrameDefault`
/// frame, and a note when the two do not pair up one to one.
pub fn interleave(native: Vec<Frame>, calls: Vec<Vec<Frame>>) -> (Vec<Frame>, Option<String>) {
    let evals = native.iter().filter(|f| is_eval(f)).count();
    let python: usize = calls.iter().map(Vec::len).sum();
    let mut calls = calls.into_iter();
    let mut merged = Vec::with_capacity(native.len() + python);
    for frame in native {
        if is_eval(&frame)
            && let Some(call) = calls.next()
        {
            merged.extend(call);
        }
        merged.push(frame);
    }
    let rest: Vec<Frame> = calls.flatten().collect();
    let groups = evals.max(1);
    let note = if evals == 0 && python > 0 {
        Some(format!(
            "no {EVAL_FUNCTION} frame among the native frames (no symbols?): the {python} \
             Python frames follow them"
        ))
    } else if !rest.is_empty() {
        Some(format!(
            "{} Python frames are outside the native frames unwound (only {groups} \
             {EVAL_FUNCTION} frames): they follow them",
            rest.len()
        ))
    } else {
        None
    };
    merged.extend(rest);
    (merged, note)
}

pub fn is_eval(frame: &Frame) -> bool {
    !frame.inlined && !frame.python && frame.symbol.as_deref() == Some(EVAL_FUNCTION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::FrameTag;

    fn native(symbol: &str) -> Frame {
        Frame {
            address: "0x1".into(),
            symbol: Some(symbol.into()),
            offset: Some(0),
            module: Some("/usr/bin/python3.11".into()),
            file: None,
            line: None,
            inlined: false,
            python: false,
            tag: FrameTag::Runtime,
        }
    }

    fn python(function: &str) -> Frame {
        Frame {
            address: "0x2".into(),
            symbol: Some(function.into()),
            offset: None,
            module: None,
            file: Some("app.py".into()),
            line: Some(3),
            inlined: false,
            python: true,
            tag: FrameTag::Application,
        }
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().filter_map(|f| f.symbol.as_deref()).collect()
    }

    #[test]
    fn each_call_goes_before_its_eval_frame() {
        let stack = vec![
            native("futex_wait"),
            native("PyThread_acquire_lock_timed"),
            native(EVAL_FUNCTION),
            native("thread_run"),
            native(EVAL_FUNCTION),
            native("_start"),
        ];
        let calls = vec![
            vec![python("inner"), python("outer")],
            vec![python("<module>")],
        ];
        let (merged, note) = interleave(stack, calls);
        assert_eq!(
            names(&merged),
            [
                "futex_wait",
                "PyThread_acquire_lock_timed",
                "inner",
                "outer",
                EVAL_FUNCTION,
                "thread_run",
                "<module>",
                EVAL_FUNCTION,
                "_start"
            ]
        );
        assert_eq!(note, None);
    }

    #[test]
    fn an_inlined_frame_of_the_same_name_is_not_a_call() {
        let mut inlined = native(EVAL_FUNCTION);
        inlined.inlined = true;
        let (merged, _) = interleave(
            vec![inlined, native(EVAL_FUNCTION)],
            vec![vec![python("f")]],
        );
        assert_eq!(names(&merged), [EVAL_FUNCTION, "f", EVAL_FUNCTION]);
    }

    #[test]
    fn frames_beyond_the_native_walk_follow_it_with_a_note() {
        let (merged, note) = interleave(
            vec![native("sleep"), native(EVAL_FUNCTION)],
            vec![vec![python("inner")], vec![python("outer")]],
        );
        assert_eq!(names(&merged), ["sleep", "inner", EVAL_FUNCTION, "outer"]);
        assert!(note.is_some_and(|n| n.contains("1 Python frames are outside")));
    }

    #[test]
    fn eval_frames_without_python_frames_stay_as_they_are() {
        let (merged, note) = interleave(
            vec![native(EVAL_FUNCTION), native(EVAL_FUNCTION)],
            vec![vec![python("run")]],
        );
        assert_eq!(names(&merged), ["run", EVAL_FUNCTION, EVAL_FUNCTION]);
        assert_eq!(note, None);
    }

    #[test]
    fn without_named_eval_frames_the_python_frames_follow() {
        let (merged, note) = interleave(vec![native("??")], vec![vec![python("f")]]);
        assert_eq!(names(&merged), ["??", "f"]);
        assert!(note.is_some_and(|n| n.contains("no _PyEval_EvalFrameDefault")));
    }
}
