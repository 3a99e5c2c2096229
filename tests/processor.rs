//! Processor identity: indexes, (group, number) pairs and uniform topologies,
//! every conversion and its refusal.

use perproc::{OutOfRange, ProcessorIndex, ProcessorNumber, UniformGroups, MAX_GROUP_SIZE};

fn index(raw: u32) -> ProcessorIndex {
    ProcessorIndex::new(raw).unwrap()
}

#[test]
fn an_index_converts_both_ways_and_refuses_the_invalid_index() {
    for raw in [0, 1, 63, 64, 2047, u32::MAX - 1] {
        let i = index(raw);
        assert_eq!(i.get(), raw);
        assert_eq!(u32::from(i), raw);
        assert_eq!(i.as_usize(), raw as usize);
        assert_eq!(ProcessorIndex::try_from(raw), Ok(i));
        assert_eq!(ProcessorIndex::try_from(raw as usize), Ok(i));
        assert_eq!(ProcessorIndex::from_usize(raw as usize), Some(i));
        assert_eq!(i.to_string(), raw.to_string());
    }
    assert_eq!(ProcessorIndex::ZERO, index(0));
    assert_eq!(ProcessorIndex::new(ProcessorIndex::INVALID_RAW), None);
    assert_eq!(ProcessorIndex::try_from(u32::MAX), Err(OutOfRange));
    assert_eq!(ProcessorIndex::try_from(usize::MAX), Err(OutOfRange));
    assert_eq!(ProcessorIndex::from_usize(1 << 40), None);
    assert_eq!(
        OutOfRange.to_string(),
        "processor index or number out of range"
    );
}

#[test]
fn a_processor_number_keeps_group_and_number_and_refuses_64_and_up() {
    for (group, number) in [(0, 0), (0, 1), (1, 63), (7, 5), (u16::MAX, 62)] {
        let n = ProcessorNumber::new(group, number).unwrap();
        assert_eq!((n.group(), n.number()), (group, number));
        assert_eq!(n.to_string(), format!("{group}:{number}"));
    }
    assert_eq!(ProcessorNumber::new(0, MAX_GROUP_SIZE), None);
    assert_eq!(ProcessorNumber::new(3, u8::MAX), None);
}

#[test]
fn uniform_groups_map_indexes_and_numbers_densely() {
    assert_eq!(UniformGroups::new(0), None);
    assert_eq!(UniformGroups::new(MAX_GROUP_SIZE + 1), None);
    for size in [1u8, 2, 3, 4, 48, 64] {
        let groups = UniformGroups::new(size).unwrap();
        assert_eq!(groups.size(), size);
        for raw in [0u32, 1, 2, 5, 63, 64, 65, 200, 4095] {
            let n = groups.number_of(index(raw)).unwrap();
            assert_eq!(u32::from(n.group()), raw / u32::from(size));
            assert_eq!(u32::from(n.number()), raw % u32::from(size));
            assert_eq!(
                groups.index_of(n),
                Some(index(raw)),
                "size {size}, index {raw}"
            );
        }
        // A number past the group's size is not a processor of the topology.
        if size < MAX_GROUP_SIZE {
            let outside = ProcessorNumber::new(0, size).unwrap();
            assert_eq!(groups.index_of(outside), None);
        }
    }
    // Groups past u16 and indexes past u32 do not exist.
    let ones = UniformGroups::new(1).unwrap();
    assert_eq!(ones.number_of(index(1 << 16)), None);
    assert_eq!(
        ones.number_of(index(u16::MAX.into())).map(|n| n.group()),
        Some(u16::MAX)
    );
    let wide = UniformGroups::new(64).unwrap();
    let last_group = ProcessorNumber::new(u16::MAX, 63).unwrap();
    assert_eq!(
        wide.index_of(last_group),
        Some(index(u32::from(u16::MAX) * 64 + 63))
    );
}
