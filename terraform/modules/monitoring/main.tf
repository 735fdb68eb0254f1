# The monitoring host: Prometheus (scrapes every coordinator replica and finds agents through
# EC2 discovery by the tag flotilla:role=agent) and Grafana with the dashboards from
# monitoring/grafana. Ansible (roles prometheus and grafana) installs both.

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

resource "aws_instance" "monitoring" {
  ami                    = var.ami_id != null ? var.ami_id : data.aws_ami.ubuntu[0].id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [var.security_group_id]
  iam_instance_profile   = var.instance_profile_name
  key_name               = var.ssh_key_name
  ebs_optimized          = true
  monitoring             = true

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
    Name            = "${var.name}-monitoring"
    "flotilla:role" = "monitoring"
  })

  volume_tags = merge(var.tags, {
    Name = "${var.name}-monitoring"
  })

  lifecycle {
    ignore_changes = [ami]
  }
}
