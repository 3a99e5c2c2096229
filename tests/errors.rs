//! Every error the library returns says what happened: the messages a driver
//! logs are distinct and name what went wrong.

use std::collections::HashSet;

use perproc::{AllocError, Error, OutOfRange, PinError, ProcessorIndex, PushError};

#[test]
fn every_error_has_its_own_message() {
    let cpu = ProcessorIndex::new(70).unwrap();
    let cases: Vec<(Error, &str)> = vec![
        (Error::OutOfMemory, "out of memory"),
        (
            Error::IndexOutOfRange {
                index: cpu,
                capacity: 64,
            },
            "processor 70 is past the capacity of 64",
        ),
        (
            Error::Busy,
            "another event for this processor is in progress",
        ),
        (Error::NotPrepared, "the processor has no prepared slot"),
        (Error::AlreadyOnline, "the processor is already online"),
        (Error::CapacityOverflow, "size overflows the address space"),
        (Error::Exhausted, "the resource is exhausted"),
        (Error::Status(0xC000_009A_u32 as i32), "status 0xc000009a"),
        (
            Error::Pin(PinError::InterruptLevel),
            "cannot pin above DISPATCH_LEVEL",
        ),
        (
            Error::Pin(PinError::Unavailable),
            "this thread cannot be pinned here",
        ),
    ];
    let mut seen = HashSet::new();
    for (error, message) in &cases {
        assert_eq!(error.to_string(), *message);
        assert!(seen.insert(error.to_string()), "{message} twice");
    }
    assert_eq!(
        PinError::InterruptLevel.to_string(),
        "cannot pin above DISPATCH_LEVEL"
    );
    assert_eq!(
        Error::from(PinError::Unavailable),
        Error::Pin(PinError::Unavailable)
    );
    assert_eq!(AllocError.to_string(), "allocation refused");
    assert_eq!(Error::from(AllocError), Error::OutOfMemory);
    assert_eq!(
        OutOfRange.to_string(),
        "processor index or number out of range"
    );
}

#[test]
fn a_refused_push_names_its_reason_and_gives_the_item_back() {
    let refused = PushError {
        item: vec![1u8, 2, 3],
        error: Error::Exhausted,
    };
    assert_eq!(
        refused.to_string(),
        "item not queued: the resource is exhausted"
    );
    assert_eq!(format!("{refused:?}"), "PushError { error: Exhausted, .. }");
    assert_eq!(refused.into_inner(), vec![1, 2, 3]);
}
