# Instance roles, each with only what its process calls:
#
#   coordinator  the autoscaler (flotilla coordinator --autoscale aws:GROUP): read every group
#                (DescribeAutoScalingGroups cannot be limited to one), and change only the agent
#                group: desired capacity, instance protection of busy agents, the group's
#                settings, and the termination lifecycle hook's heartbeat and completion.
#   agent        checkpoints: get, put and list under the checkpoint prefix of the artifact
#                bucket; at boot, read the release under the dist prefix and the agent's private
#                key from one SSM parameter; use the artifact key only through S3 and SSM.
#   monitoring   Prometheus's EC2 discovery: DescribeInstances and DescribeAvailabilityZones
#                (neither can be limited to resources).
#
# Every role may also be reached through SSM Session Manager when enable_ssm_session_manager
# is set (the AWS-managed AmazonSSMManagedInstanceCore policy), which replaces inbound SSH.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id

  # Built from the name rather than taken from the group so that roles and group do not
  # depend on each other (the group needs the agent role's instance profile).
  agent_group_arn = "arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${var.agent_group_name}"

  agent_key_parameter_arn      = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/${trimprefix(var.agent_key_parameter_name, "/")}"
  agent_etcd_key_parameter_arn = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/${trimprefix(var.agent_etcd_key_parameter_name, "/")}"

  ssm_core_policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"

  roles = {
    coordinator = aws_iam_role.coordinator.name
    agent       = aws_iam_role.agent.name
    monitoring  = aws_iam_role.monitoring.name
  }
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# --- coordinator ------------------------------------------------------------------------

resource "aws_iam_role" "coordinator" {
  name_prefix        = "${var.name}-coordinator-"
  description        = "Flotilla coordinators: autoscale the agent group"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "coordinator" {
  statement {
    sid       = "ReadGroups"
    actions   = ["autoscaling:DescribeAutoScalingGroups"]
    resources = ["*"]
  }

  statement {
    sid = "ScaleTheAgentGroup"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:SetInstanceProtection",
      "autoscaling:UpdateAutoScalingGroup",
      "autoscaling:CompleteLifecycleAction",
      "autoscaling:RecordLifecycleActionHeartbeat",
    ]
    resources = [local.agent_group_arn]
  }
}

resource "aws_iam_role_policy" "coordinator" {
  name   = "autoscale-agents"
  role   = aws_iam_role.coordinator.id
  policy = data.aws_iam_policy_document.coordinator.json
}

resource "aws_iam_instance_profile" "coordinator" {
  name_prefix = "${var.name}-coordinator-"
  role        = aws_iam_role.coordinator.name
}

# --- agent ------------------------------------------------------------------------------

resource "aws_iam_role" "agent" {
  name_prefix        = "${var.name}-agent-"
  description        = "Flotilla GPU agents: checkpoints in S3, the release and key at boot"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "agent" {
  statement {
    sid       = "ListCheckpoints"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.checkpoint_prefix, "${var.checkpoint_prefix}*"]
    }
  }

  statement {
    sid = "ReadWriteCheckpoints"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
    ]
    resources = ["${var.bucket_arn}/${var.checkpoint_prefix}*"]
  }

  statement {
    sid       = "ReadRelease"
    actions   = ["s3:GetObject"]
    resources = ["${var.bucket_arn}/${var.dist_prefix}*"]
  }

  # An instance's role session is ROLE_ID:INSTANCE_ID (aws:userid): it reads its own
  # certificate and key, and no other instance's.
  statement {
    sid       = "ReadOwnAgentCertificate"
    actions   = ["s3:GetObject"]
    resources = ["${var.bucket_arn}/${var.agent_certificates_prefix}$${aws:userid}/*"]
  }

  statement {
    sid       = "ReadAgentKey"
    actions   = ["ssm:GetParameter"]
    resources = [local.agent_key_parameter_arn, local.agent_etcd_key_parameter_arn]
  }

  statement {
    sid = "UseArtifactKeyThroughS3AndSsm"
    actions = [
      "kms:Decrypt",
      "kms:GenerateDataKey",
    ]
    resources = [var.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values = [
        "s3.${local.region}.amazonaws.com",
        "ssm.${local.region}.amazonaws.com",
      ]
    }
  }
}

resource "aws_iam_role_policy" "agent" {
  name   = "checkpoints-and-release"
  role   = aws_iam_role.agent.id
  policy = data.aws_iam_policy_document.agent.json
}

resource "aws_iam_instance_profile" "agent" {
  name_prefix = "${var.name}-agent-"
  role        = aws_iam_role.agent.name
}

# --- monitoring -------------------------------------------------------------------------

resource "aws_iam_role" "monitoring" {
  name_prefix        = "${var.name}-monitoring-"
  description        = "Prometheus: discover agents through the EC2 API"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "monitoring" {
  statement {
    sid = "DiscoverAgents"
    actions = [
      "ec2:DescribeInstances",
      "ec2:DescribeAvailabilityZones",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "monitoring" {
  name   = "ec2-discovery"
  role   = aws_iam_role.monitoring.id
  policy = data.aws_iam_policy_document.monitoring.json
}

resource "aws_iam_instance_profile" "monitoring" {
  name_prefix = "${var.name}-monitoring-"
  role        = aws_iam_role.monitoring.name
}

# --- Session Manager --------------------------------------------------------------------

resource "aws_iam_role_policy_attachment" "ssm_core" {
  for_each = var.enable_ssm_session_manager ? local.roles : {}

  role       = each.value
  policy_arn = local.ssm_core_policy_arn
}
