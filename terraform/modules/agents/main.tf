# The GPU agents: an auto scaling group of g5 instances, spot above an optional on-demand base,
# that the leading coordinator sizes itself (flotilla coordinator --autoscale aws:GROUP):
#
# - min 0, max max_size, no desired capacity here: the coordinator sets it from demand and
#   scales an idle fleet to zero, so Terraform ignores later changes to it;
# - the coordinator protects busy instances from scale-in, so the group itself does not;
# - a termination lifecycle hook holds a leaving instance for up to heartbeat_timeout seconds
#   while its agent drains and checkpoints; the coordinator completes the action (or it
#   continues on its own when the heartbeat runs out);
# - capacity rebalancing replaces spot instances that AWS flags as at risk before they are
#   interrupted.
#
# Each instance installs the release from S3 at boot (user_data.sh.tftpl) and runs the agent
# under systemd with its EC2 instance id as agent id: the autoscaler maps agents to instances
# by that id.

data "aws_ami" "deep_learning_base" {
  count = var.ami_id == null ? 1 : 0

  most_recent = true
  owners      = ["amazon"]

  filter {
    name   = "name"
    values = [var.ami_name_pattern]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }

  filter {
    name   = "state"
    values = ["available"]
  }
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.deep_learning_base[0].id

  instance_tags = merge(var.tags, {
    Name            = "${var.name}-agent"
    "flotilla:role" = "agent"
  })

  user_data = templatefile("${path.module}/user_data.sh.tftpl", {
    bucket                  = var.bucket_name
    dist_prefix             = var.dist_prefix
    checkpoint_url          = "s3://${var.bucket_name}/${trimsuffix(var.checkpoint_prefix, "/")}"
    key_parameter_name      = var.agent_key_parameter_name
    etcd_key_parameter_name = var.agent_etcd_key_parameter_name
    per_instance            = var.per_instance_certificates
    certificates_prefix     = var.agent_certificates_prefix
    coordinator_list        = join(",", var.coordinator_addresses)
    etcd_list               = join(",", var.etcd_endpoints)
    device                  = var.device
    stop_grace              = var.stop_grace
    stop_timeout_seconds    = var.stop_timeout_seconds
  })
}

resource "aws_launch_template" "agent" {
  name_prefix            = "${var.name}-agent-"
  description            = "Flotilla GPU agent"
  image_id               = local.ami_id
  key_name               = var.ssh_key_name
  update_default_version = true
  ebs_optimized          = true
  user_data              = base64encode(local.user_data)
  vpc_security_group_ids = [var.security_group_id]

  iam_instance_profile {
    arn = var.instance_profile_arn
  }

  # IMDSv2 only, and one hop: the agent reads its instance id, spot notices and lifecycle
  # state from the host, never from a container.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = var.root_device_name

    ebs {
      volume_size           = var.root_volume_size
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = local.instance_tags
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.instance_tags
  }

  tag_specifications {
    resource_type = "network-interface"
    tags          = local.instance_tags
  }

  tags = var.tags
}

resource "aws_autoscaling_group" "agents" {
  name                      = var.group_name
  min_size                  = 0
  max_size                  = var.max_size
  vpc_zone_identifier       = var.subnet_ids
  capacity_rebalance        = true
  protect_from_scale_in     = false
  health_check_type         = "EC2"
  health_check_grace_period = 300
  default_instance_warmup   = 300
  wait_for_capacity_timeout = "0"
  metrics_granularity       = "1Minute"
  enabled_metrics = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
    "GroupTotalInstances",
    "GroupInServiceCapacity",
    "GroupTotalCapacity",
  ]

  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = var.on_demand_base_capacity
      on_demand_percentage_above_base_capacity = var.on_demand_percentage_above_base_capacity
      on_demand_allocation_strategy            = "prioritized"
      spot_allocation_strategy                 = var.spot_allocation_strategy
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.agent.id
        version            = aws_launch_template.agent.latest_version
      }

      # Every type here has one GPU, so each instance counts as one unit of capacity and
      # offers one slot.
      dynamic "override" {
        for_each = var.instance_types

        content {
          instance_type     = override.value
          weighted_capacity = "1"
        }
      }
    }
  }

  dynamic "tag" {
    for_each = local.instance_tags

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # The coordinator owns the desired capacity.
    ignore_changes = [desired_capacity]
  }
}

# A separate resource (not initial_lifecycle_hook) so that changes to it are applied. The group
# starts with no instances (no desired capacity until the coordinator sets one), so none can
# launch before the hook exists.
resource "aws_autoscaling_lifecycle_hook" "drain" {
  name                   = "flotilla-drain" # the coordinator's --autoscale default hook name
  autoscaling_group_name = aws_autoscaling_group.agents.name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_TERMINATING"
  heartbeat_timeout      = var.lifecycle_hook_heartbeat_timeout
  default_result         = "CONTINUE"
}
