// Pinned encodings for golden.rs. Regenerate only for a deliberate protocol change.
const GOLDEN: &[(&str, &str)] = &[
    ("Hello", "010101026131"),
    ("HelloReply::Welcome", "0001050163"),
    ("HelloReply::Refused", "01020103783a31016d"),
    (
        "AgentMessage::Register",
        "000261310168020101030701010307010001046c6f7373000000000000e03f0905302e312e30",
    ),
    ("AgentMessage::Heartbeat", "0101030701"),
    ("AgentMessage::TrialStarted", "02030701"),
    (
        "AgentMessage::TrialMetrics",
        "03030701010201046c6f7373000000000000e03f28",
    ),
    (
        "AgentMessage::TrialFinished(Failed)",
        "040307010101040004626f6f6d03",
    ),
    ("AgentMessage::TrialFinished(Stopped)", "04030701020403"),
    ("AgentMessage::CommandRejected", "05010307010172"),
    ("AgentMessage::Draining", "06"),
    ("CoordinatorCommand::Registered", "0500fbe80301030701"),
    (
        "CoordinatorCommand::StartTrial",
        "050103070102026c72007b14ae47e17a843f036f707402046164616d010474727565000000000001046c6f7373000001",
    ),
    ("CoordinatorCommand::StopTrial", "050203070100"),
    (
        "ClientRequest::SubmitSweep",
        "000167046c6f73730001046c6f737301000000000000f03f02026c7200012d431cebe2361a3f019a9999999999b93f0100016e0101000000000000f03f010000000000000840000000000004020102316d010474727565000000000001046c6f737300010002",
    ),
    ("ClientRequest::ListSweeps", "01"),
    ("ClientRequest::SweepStatus", "0203"),
    ("ClientRequest::CancelSweep", "0303"),
    ("ClientRequest::BestTrial", "0403"),
    ("ClientRequest::ListTrials", "0503"),
    ("ClientRequest::WatchSweep", "0603"),
    ("ClientRequest::ListAgents", "07"),
    (
        "ClientResponse::SweepSubmitted",
        "0003016701046c6f7373000400000400000103070102026c72007b14ae47e17a843f036f707402046164616d0201046c6f7373000000000000e03f01000000000000e03f01010261310001fbe80301fbd00701fb84030001fa010102",
    ),
    (
        "ClientResponse::Best",
        "040103070102026c72007b14ae47e17a843f036f707402046164616d0201046c6f7373000000000000e03f01000000000000e03f01010261310001fbe80301fbd00701fb84030001fa",
    ),
    (
        "ClientResponse::Event(Started)",
        "060003070102613102026c72007b14ae47e17a843f036f707402046164616d",
    ),
    (
        "ClientResponse::Event(Metric)",
        "06010307010201046c6f7373000000000000e03f28",
    ),
    (
        "ClientResponse::Event(SweepFinished)",
        "060303016701046c6f7373000400000400000103070102026c72007b14ae47e17a843f036f707402046164616d0201046c6f7373000000000000e03f01000000000000e03f01010261310001fbe80301fbd00701fb84030001fa010102",
    ),
    (
        "ClientResponse::Agents",
        "07010261310168020100010a010307010005302e312e30",
    ),
    (
        "ClientResponse::Error",
        "08000362616401116275646765742e6d61785f747269616c73126d757374206265206174206c656173742031",
    ),
    ("ParamValue::Int", "0105"),
    ("ParamValue::Bool", "0301"),
];
