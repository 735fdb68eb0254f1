# The control plane: coordinator_count hosts (3 by default), one per availability zone, each
# running one flotilla coordinator replica and one etcd member (etcd is co-located: its load
# is a few keys per trial, and three hosts instead of six keep the same failure tolerance of
# one host or one zone). Ansible (roles etcd and coordinator) installs and configures both.
#
# Each host gets a fixed private address (the tenth-and-up host address of its subnet):
# agents and clients take coordinators as IP:PORT (flotilla does not resolve names) and etcd's
# initial cluster is a static list, so addresses must not change when a host is replaced.

data "aws_ami" "ubuntu" {
  count = var.ami_id == null ? 1 : 0

  most_recent = true
  owners      = ["099720109477"] # Canonical

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
  ami_id       = var.ami_id != null ? var.ami_id : data.aws_ami.ubuntu[0].id
  subnet_count = length(var.subnet_ids)

  hosts = [
    for index in range(var.coordinator_count) : {
      name       = "${var.name}-coordinator-${index}"
      subnet_id  = var.subnet_ids[index % local.subnet_count]
      private_ip = cidrhost(var.subnet_cidrs[index % local.subnet_count], 10 + floor(index / local.subnet_count))
    }
  ]
}

resource "aws_instance" "coordinator" {
  count = var.coordinator_count

  ami                     = local.ami_id
  instance_type           = var.instance_type
  subnet_id               = local.hosts[count.index].subnet_id
  private_ip              = local.hosts[count.index].private_ip
  vpc_security_group_ids  = [var.security_group_id]
  iam_instance_profile    = var.instance_profile_name
  key_name                = var.ssh_key_name
  ebs_optimized           = true
  monitoring              = true
  disable_api_termination = var.termination_protection

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_size           = var.root_volume_size
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  tags = merge(var.tags, {
    Name            = local.hosts[count.index].name
    "flotilla:role" = "coordinator"
  })

  volume_tags = merge(var.tags, {
    Name = local.hosts[count.index].name
  })

  lifecycle {
    # A newer Ubuntu image must not replace a running etcd member; replace hosts one at a
    # time on purpose (docs in terraform/README.md).
    ignore_changes = [ami]
  }
}
