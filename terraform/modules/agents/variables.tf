variable "name" {
  description = "Prefix for resource names (the cluster name)."
  type        = string
}

variable "group_name" {
  description = "Name of the auto scaling group (the coordinator's --autoscale aws:GROUP)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets the agents launch in."
  type        = list(string)
}

variable "security_group_id" {
  description = "The agents' security group."
  type        = string
}

variable "instance_profile_arn" {
  description = "The agents' instance profile."
  type        = string
}

variable "instance_types" {
  description = "Instance types the group may launch, in on-demand priority order; each should have one GPU."
  type        = list(string)
}

variable "max_size" {
  description = "Most agents the coordinator may run at once."
  type        = number
}

variable "on_demand_base_capacity" {
  description = "The first this many instances are on-demand; the rest follow on_demand_percentage_above_base_capacity."
  type        = number
}

variable "on_demand_percentage_above_base_capacity" {
  description = "Share of on-demand instances above the base (0 = all spot)."
  type        = number
}

variable "spot_allocation_strategy" {
  description = "How the group picks spot pools."
  type        = string
}

variable "lifecycle_hook_heartbeat_timeout" {
  description = "Seconds a terminating instance is held for its agent to drain before termination continues."
  type        = number
}

variable "ami_id" {
  description = "AMI for the agents; null picks the newest image matching ami_name_pattern owned by Amazon."
  type        = string
  default     = null
}

variable "ami_name_pattern" {
  description = "Name filter for the Amazon-owned AMI used when ami_id is null."
  type        = string
}

variable "root_device_name" {
  description = "Root device of the AMI (/dev/sda1 on Ubuntu images)."
  type        = string
}

variable "root_volume_size" {
  description = "Root volume size in GiB (image, CUDA libraries, work directory)."
  type        = number
}

variable "bucket_name" {
  description = "The artifact bucket."
  type        = string
}

variable "dist_prefix" {
  description = "Key prefix of the release (flotilla, flotilla.sha256, certs/ca.pem, certs/agent.pem)."
  type        = string
}

variable "checkpoint_prefix" {
  description = "Key prefix of checkpoints (the agent's --artifacts)."
  type        = string
}

variable "agent_key_parameter_name" {
  description = "SSM SecureString parameter that holds agent-key.pem."
  type        = string
}

variable "per_instance_certificates" {
  description = "Wait at boot for a certificate bound to the instance id under agent_certificates_prefix (true), or use the shared one in agent_key_parameter_name (false)."
  type        = bool
}

variable "agent_certificates_prefix" {
  description = "Key prefix of per-instance agent certificates in the bucket."
  type        = string
}

variable "agent_etcd_key_parameter_name" {
  description = "SSM SecureString parameter that holds etcd/agent-key.pem (etcd user flotilla-agent)."
  type        = string
}

variable "coordinator_addresses" {
  description = "Every coordinator replica as IP:PORT (the agent's --coordinator)."
  type        = list(string)
}

variable "etcd_endpoints" {
  description = "etcd client URLs for checkpoint leases (the agent's --etcd); empty leaves --etcd out."
  type        = list(string)
}

variable "device" {
  description = "The agent's --device for built-in trainers: auto, cpu, cuda or cuda:N."
  type        = string
}

variable "stop_grace" {
  description = "The agent's --stop-grace: between SIGTERM and SIGKILL when a trial is stopped."
  type        = string
}

variable "stop_timeout_seconds" {
  description = "systemd TimeoutStopSec for the agent: long enough to drain."
  type        = number
}

variable "tags" {
  description = "Tags for the instances, their volumes and the launch template (besides Name and flotilla:role)."
  type        = map(string)
}

variable "ssh_key_name" {
  description = "EC2 key pair for SSH; null for none."
  type        = string
  default     = null
}
