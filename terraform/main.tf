# A Flotilla cluster on AWS:
#
#   network     VPC, public and private subnets in the chosen zones, NAT (optional), an S3
#               gateway endpoint, VPC flow logs
#   security    one security group per role (coordinator + etcd, agent, monitoring)
#   storage     the artifact bucket (checkpoints, the release agents install) and its log bucket
#   iam         least-privilege instance roles for coordinators, agents and monitoring
#   control     coordinator hosts with co-located etcd members, on fixed private addresses
#   agents      the g5 GPU auto scaling group the coordinator scales (spot, on-demand base)
#   monitoring  the Prometheus and Grafana host
#
# Terraform makes the machines; Ansible (ansible/) configures the coordinator, etcd and
# monitoring hosts; agents configure themselves at boot from the launch template's user data.
# terraform/README.md walks through a deployment.

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      "flotilla:cluster" = var.cluster_name
    })
  }
}

locals {
  agent_group_name = "${var.cluster_name}-agents"

  # Secrets stay out of Terraform state: the operator stores agent-key.pem in this parameter
  # (terraform/README.md, step 3); Terraform only grants the agents read access to it.
  agent_key_parameter_name = "/${var.cluster_name}/agent/tls-key"
  # The agents' etcd client key (CERTS/etcd/agent-key.pem): etcd user flotilla-agent, which
  # may only take checkpoint leases.
  agent_etcd_key_parameter_name = "/${var.cluster_name}/agent/etcd-tls-key"
  # Per-instance agent certificates (`flotilla certs issue-instances`): one folder per instance
  # role session (ROLE_ID:INSTANCE_ID), outside the release prefix, each readable by that
  # instance only (modules/iam).
  agent_certificates_prefix = "agent-certs/"

  coordinator_addresses = [for ip in module.control.private_ips : "${ip}:7070"]
  # etcd serves TLS only and authenticates clients by certificate (ansible/roles/etcd).
  etcd_endpoints = [for ip in module.control.private_ips : "https://${ip}:2379"]

  # Tags that modules put on instances and volumes themselves (the provider's default tags do
  # not reach volumes created through a launch template).
  instance_tags = merge(var.tags, {
    "flotilla:cluster" = var.cluster_name
  })
}

module "network" {
  source = "./modules/network"

  name                    = var.cluster_name
  vpc_cidr                = var.vpc_cidr
  availability_zones      = var.availability_zones
  enable_nat_gateway      = var.enable_nat_gateway
  single_nat_gateway      = var.single_nat_gateway
  flow_log_retention_days = var.flow_log_retention_days
}

module "security" {
  source = "./modules/security"

  name            = var.cluster_name
  vpc_id          = module.network.vpc_id
  client_cidrs    = var.client_cidrs
  dashboard_cidrs = var.dashboard_cidrs
  admin_ssh_cidrs = var.admin_ssh_cidrs
  agents_use_etcd = var.agents_use_etcd
}

module "storage" {
  source = "./modules/storage"

  name                              = var.cluster_name
  bucket_name                       = var.artifact_bucket_name
  checkpoint_prefix                 = var.checkpoint_prefix
  checkpoint_retention_days         = var.checkpoint_retention_days
  noncurrent_version_retention_days = var.noncurrent_version_retention_days
  access_log_retention_days         = var.access_log_retention_days
  force_destroy                     = var.artifact_bucket_force_destroy
}

module "iam" {
  source = "./modules/iam"

  name                          = var.cluster_name
  agent_group_name              = local.agent_group_name
  bucket_arn                    = module.storage.bucket_arn
  checkpoint_prefix             = var.checkpoint_prefix
  dist_prefix                   = var.dist_prefix
  kms_key_arn                   = module.storage.kms_key_arn
  agent_key_parameter_name      = local.agent_key_parameter_name
  agent_etcd_key_parameter_name = local.agent_etcd_key_parameter_name
  agent_certificates_prefix     = local.agent_certificates_prefix
  enable_ssm_session_manager    = var.enable_ssm_session_manager
}

module "control" {
  source = "./modules/control"

  name                   = var.cluster_name
  coordinator_count      = var.coordinator_count
  instance_type          = var.coordinator_instance_type
  subnet_ids             = module.network.private_subnet_ids
  subnet_cidrs           = module.network.private_subnet_cidrs
  security_group_id      = module.security.coordinator_security_group_id
  instance_profile_name  = module.iam.coordinator_instance_profile_name
  ami_id                 = var.server_ami_id
  ami_name_pattern       = var.server_ami_name_pattern
  root_volume_size       = var.coordinator_root_volume_size
  termination_protection = var.coordinator_termination_protection
  ssh_key_name           = var.ssh_key_name
  tags                   = local.instance_tags
}

module "agents" {
  source = "./modules/agents"

  name                                     = var.cluster_name
  group_name                               = local.agent_group_name
  subnet_ids                               = module.network.private_subnet_ids
  security_group_id                        = module.security.agent_security_group_id
  instance_profile_arn                     = module.iam.agent_instance_profile_arn
  instance_types                           = var.agent_instance_types
  max_size                                 = var.agent_max_size
  on_demand_base_capacity                  = var.agent_on_demand_base_capacity
  on_demand_percentage_above_base_capacity = var.agent_on_demand_percentage_above_base_capacity
  spot_allocation_strategy                 = var.agent_spot_allocation_strategy
  lifecycle_hook_heartbeat_timeout         = var.agent_lifecycle_hook_heartbeat_timeout
  ami_id                                   = var.agent_ami_id
  ami_name_pattern                         = var.agent_ami_name_pattern
  root_device_name                         = var.agent_root_device_name
  root_volume_size                         = var.agent_root_volume_size
  bucket_name                              = module.storage.bucket_name
  dist_prefix                              = var.dist_prefix
  checkpoint_prefix                        = var.checkpoint_prefix
  agent_key_parameter_name                 = local.agent_key_parameter_name
  agent_etcd_key_parameter_name            = local.agent_etcd_key_parameter_name
  per_instance_certificates                = var.agent_per_instance_certificates
  agent_certificates_prefix                = local.agent_certificates_prefix
  coordinator_addresses                    = local.coordinator_addresses
  etcd_endpoints                           = var.agents_use_etcd ? local.etcd_endpoints : []
  device                                   = var.agent_device
  stop_grace                               = var.agent_stop_grace
  stop_timeout_seconds                     = var.agent_stop_timeout_seconds
  ssh_key_name                             = var.ssh_key_name
  tags                                     = local.instance_tags
}

module "monitoring" {
  source = "./modules/monitoring"

  name                  = var.cluster_name
  instance_type         = var.monitoring_instance_type
  subnet_id             = module.network.private_subnet_ids[0]
  security_group_id     = module.security.monitoring_security_group_id
  instance_profile_name = module.iam.monitoring_instance_profile_name
  ami_id                = var.server_ami_id
  ami_name_pattern      = var.server_ami_name_pattern
  root_volume_size      = var.monitoring_root_volume_size
  ssh_key_name          = var.ssh_key_name
  tags                  = local.instance_tags
}
